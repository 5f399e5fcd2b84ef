"""The persistent d128 forward without a mask past 2k keys storing each thread's output elements directly
(``ws_output_mode`` 2: the next tile's Q loads while a tile finishes) against staging the output in the Q buffer
for the copy engine. Checks bitwise equality of O and LSE on awkward shapes and both layouts, then times both with
SDPA flash and cuDNN (CUDA-graph replays, interleaved rounds after 10 s of matmuls). Needs odirect.patch
(beside this script) applied to the code at 32a00a4 (not kept). Usage:
python benchmarks/results/h100-2026-11-27-odirect/odirect_ab.py ROUNDS; writes $OUT/odirect.json."""
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
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
SHAPES = [(128, 4096), (128, 8192), (128, 16384)]


def forward(name, q, k, v, layout="bhsd"):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(q, k, v)
        return f

    def f():
        hopper.WS_OUTPUT_DIRECT = name == "direct"
        try:
            return fa2dist.flash_attention(q, k, v, layout=layout, return_lse=True)
        finally:
            hopper.WS_OUTPUT_DIRECT = True
    return f


checks = {}
# (batch, heads, kv heads, seqlen_q, seqlen_k, layout): rows past the sequence, GQA, both layouts, few tiles.
for b, h, hk, nq, nk, layout in [(2, 4, 2, 1000, 2100, "bshd"), (1, 3, 3, 4100, 4100, "bhsd"),
                                 (3, 8, 1, 333, 9000, "bshd"), (1, 2, 2, 64, 2049, "bhsd"),
                                 (4, 16, 16, 4096, 4096, "bshd")]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(nq + nk)
        shape_q = (b, nq, h, 128) if layout == "bshd" else (b, h, nq, 128)
        shape_k = (b, nk, hk, 128) if layout == "bshd" else (b, hk, nk, 128)
        q = torch.randn(shape_q, device="cuda", dtype=dtype)
        k, v = (torch.randn(shape_k, device="cuda", dtype=dtype) for _ in range(2))
        assert hopper.ws_output_mode(128, False, nk) == 2
        base = forward("staged", q, k, v, layout)()
        same = True
        for _ in range(5):
            out = forward("direct", q, k, v, layout)()
            same &= all(torch.equal(x, y) for x, y in zip(base, out))
        key = f"b{b} h{h}/{hk} nq{nq} nk{nk} {layout} {str(dtype)[6:]}"
        checks[key] = {"bitwise": same}
        print("check", key, checks[key], flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 10:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for d, n in SHAPES:
        b, h = 16384 // n, 2048 // d
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * d
        key = f"d{d} n{n}"
        names = ["cudnn", "staged", "direct", "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(forward(name, q, k, v), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "odirect.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:10s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          " direct/staged %.3f" % (med["direct"] / med["staged"]), " staged/cudnn %.3f" % (med["staged"] / med["cudnn"]),
          " direct/cudnn %.3f" % (med["direct"] / med["cudnn"]))
