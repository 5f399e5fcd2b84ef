"""The persistent d128 forward (no mask, from 2k keys) with its loading warp asking L2 for the next tile's Q rows
(``prefetch.global.L2``) as it starts each tile, against without. Checks that the output is bitwise unchanged, then
CUDA-graph timings with every provider interleaved in each round. Usage:
python benchmarks/results/h100-2026-11-27-prefetch/prefetch_ab.py ROUNDS; writes $OUT/prefetch.json."""
import functools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_attention import _graph_ms  # noqa: E402

import fa2dist  # noqa: E402
import fa2dist.ops.attention as att  # noqa: E402

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
KERNELS = {"base": False, "prefetch": True}  # WS_PREFETCH_Q
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def run(name, q, k, v, layout="bhsd"):
    if name in BACKENDS:
        with sdpa_kernel(BACKENDS[name]):
            return F.scaled_dot_product_attention(q, k, v)
    att.WS_PREFETCH_Q = KERNELS[name]
    return fa2dist.flash_attention(q, k, v, layout=layout, return_lse=True)


checks = {}
for b, h, hk, nq, nk, layout in [(4, 16, 4, 4096, 4096, "bhsd"), (1, 17, 17, 4100, 3000, "bshd"),
                                 (2, 7, 7, 1000, 9000, "bshd"), (1, 3, 1, 16384, 16384, "bhsd")]:
    shape = (b, nq, h, 128) if layout == "bshd" else (b, h, nq, 128)
    kshape = (b, nk, hk, 128) if layout == "bshd" else (b, hk, nk, 128)
    q = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(kshape, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    (o1, l1), (o2, l2) = run("base", q, k, v, layout), run("prefetch", q, k, v, layout)
    checks[f"b{b} h{h}/{hk} nq{nq} nk{nk} {layout}"] = equal = torch.equal(o1, o2) and torch.equal(l1, l2)
    print("check", b, h, hk, nq, nk, layout, "bitwise equal:", equal, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 10:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for n in (2560, 4096, 8192, 16384):
        b, h = 16384 // n, 16
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * 128
        key = f"d128 n{n}"
        names = ["cudnn", "base", "prefetch", "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(functools.partial(run, name, q, k, v), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "prefetch.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    ratios = sorted(p / b for p, b in zip(vals["prefetch"], vals["base"]))
    print(f"{key:12s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          f" prefetch/base {ratios[len(ratios) // 2]:.3f} (rounds {' '.join(f'{x:.3f}' for x in ratios)})",
          f" prefetch/cudnn {med['prefetch'] / med['cudnn']:.3f}")
