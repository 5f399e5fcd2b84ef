"""The counter-drawn forward without a mask with its tiles back to back (``ws_stream``: each warpgroup's next tile's
first q.k goes out with the tile's last P V, two Q buffers a warpgroup) against tile by tile. Checks bitwise equality
of O and LSE on awkward shapes, then times both with SDPA flash and cuDNN (CUDA-graph replays, interleaved rounds
after 10 s of matmuls). Needs stream.patch (beside this script) applied to the code at e4662e2 (not kept). Usage:
python benchmarks/results/h100-2026-11-27-stream/stream_ab.py ROUNDS; writes $OUT/stream.json."""
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
STREAM = att.ws_stream
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
SHAPES = [(64, 512), (64, 1024), (64, 1536), (128, 1024), (128, 2048)]


def forward(name, q, k, v, layout="bhsd"):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(q, k, v)
        return f

    def f():
        att.ws_stream = STREAM if name == "stream" else (lambda *args: False)
        try:
            return fa2dist.flash_attention(q, k, v, layout=layout, return_lse=True)
        finally:
            att.ws_stream = STREAM
    return f


checks = {}
# (batch, heads, seqlen_q, seqlen_k, head dim): one key tile, ragged keys, fewer tiles than SMs, many tiles a program.
for b, h, nq, nk, d in [(1, 2, 100, 50, 64), (2, 3, 1000, 1037, 64), (1, 1, 300, 2000, 64), (4, 33, 1024, 1024, 64),
                        (3, 5, 777, 130, 128), (2, 16, 2048, 2048, 128), (1, 2, 64, 1, 128), (8, 40, 555, 1500, 64)]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(nq + nk + d)
        q = torch.randn(b, h, nq, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(b, h, nk, d, device="cuda", dtype=dtype) for _ in range(2))
        assert STREAM(d, False, nk)
        base = forward("tiles", q, k, v)()
        same = True
        for _ in range(10):
            out = forward("stream", q, k, v)()
            same &= all(torch.equal(x, y) for x, y in zip(base, out))
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        err = (out[0].double() - ref).abs().max().item()
        key = f"b{b} h{h} nq{nq} nk{nk} d{d} {str(dtype)[6:]}"
        checks[key] = {"bitwise": same, "err": err}
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
        names = ["cudnn", "tiles", "stream", "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(forward(name, q, k, v), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "stream.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:10s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          " stream/tiles %.3f" % (med["stream"] / med["tiles"]), " tiles/flash %.3f" % (med["tiles"] / med["flash"]),
          " stream/flash %.3f" % (med["stream"] / med["flash"]), " stream/cudnn %.3f" % (med["stream"] / med["cudnn"]))
