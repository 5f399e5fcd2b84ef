"""The d64 forward without a mask from 2k keys (192x128 tiles, one tile a program) against the same tiles on the
counter-drawn persistent grid (``hopper.WS_DYNAMIC``), which it ran below 2k keys only. Bitwise checks first, then
CUDA-graph timings with every provider interleaved in each round. Usage:
python benchmarks/results/h100-2026-11-27-dyn64/dyn64_ab.py ROUNDS [NAME]; writes $OUT/NAME (dyn64.json)."""
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
from fa2dist.ops.kernels import hopper  # noqa: E402

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
NAME = sys.argv[2] if len(sys.argv) > 2 else "dyn64.json"
BASE = hopper.WS_DYNAMIC
OTHERS = tuple(row for row in BASE if row[:2] != (64, False))
KERNELS = {"one_tile": OTHERS + ((64, False, 2047),), "drawn": OTHERS + ((64, False, 1 << 31),)}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def run(name, q, k, v):
    if name in BACKENDS:
        with sdpa_kernel(BACKENDS[name]):
            return F.scaled_dot_product_attention(q, k, v)
    hopper.WS_DYNAMIC = KERNELS[name]
    try:
        return fa2dist.flash_attention(q, k, v, layout="bhsd", return_lse=True)
    finally:
        hopper.WS_DYNAMIC = BASE


checks = {}
for b, h, hk, nq, nk in [(2, 4, 2, 2100, 2100), (1, 3, 3, 5000, 4100), (1, 2, 1, 300, 9000), (3, 5, 5, 2048, 2048)]:
    torch.manual_seed(nq)
    q = torch.randn(b, h, nq, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(b, hk, nk, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    (o1, l1), (o2, l2) = run("one_tile", q, k, v), run("drawn", q, k, v)
    checks[f"b{b} h{h}/{hk} nq{nq} nk{nk}"] = equal = torch.equal(o1, o2) and torch.equal(l1, l2)
    print("check", b, h, hk, nq, nk, "bitwise equal:", equal, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 10:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for n in (2048, 3072, 4096, 8192, 16384):
        b, h = round(16384 / n), 32
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * 64
        key = f"d64 n{n} b{b} full"
        names = ["cudnn", *KERNELS, "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(functools.partial(run, name, q, k, v), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(), "torch": torch.__version__},
              open(os.path.join(OUT, NAME), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    ratios = sorted(a / b for a, b in zip(vals["drawn"], vals["one_tile"]))
    print(f"{key:20s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          f"  drawn/one_tile {ratios[len(ratios) // 2]:.3f} (rounds {' '.join(f'{x:.3f}' for x in ratios)})")
