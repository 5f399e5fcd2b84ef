"""A/B on the H100: the causal Gluon forward, interleaved grid (ws_interleave) against head by head, CUDA-graph
replays (kernel time without host time), 4 interleaved rounds; SDPA cuDNN and flash for scale."""
import json, os, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import fa2dist
from fa2dist.ops.kernels import hopper
from bench_attention import _graph_ms
OUT = os.environ.get("OUT", ".")
ROWS = hopper.WS_INTERLEAVE
def fa(q, k, v):
    return fa2dist.flash_attention(q, k, v, causal=True, layout="bhsd")
def sdpa(backend):
    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return run
VARIANTS = {"head": (fa, ()), "interleaved": (fa, ROWS), "cudnn": (sdpa(SDPBackend.CUDNN_ATTENTION), ROWS),
            "flash": (sdpa(SDPBackend.FLASH_ATTENTION), ROWS)}
t0 = time.time(); res = []
for d, N in [(64, 1024), (64, 2048), (64, 4096), (64, 16384), (128, 1024), (128, 4096), (128, 8192), (128, 16384)]:
    H = 2048 // d; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    fl = 4 * B * H * N * N * d / 2
    row = dict(d=d, N=N)
    for rep in range(4):
        for name, (fn, rows) in VARIANTS.items():
            hopper.WS_INTERLEAVE = rows
            row.setdefault(name, []).append(round(fl / _graph_ms(lambda: fn(q, k, v), 100) / 1e9, 1))
    hopper.WS_INTERLEAVE = ROWS
    print(json.dumps(row), round(time.time() - t0), "s", flush=True); res.append(row)
    json.dump(res, open(os.path.join(OUT, "ab_fwd_graphs.json"), "w"), indent=1)
