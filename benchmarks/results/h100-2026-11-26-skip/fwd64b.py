"""d64 forward after the per-warpgroup causal skip: Gluon tile rows at 1k-8k (CUDA-graph replays)."""
import json, os, sys, itertools
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", "/tmp")
base = hopper.WS_TILES
ROWS = {"cur": None, "128x128x3": (128, 128, 3), "192x64x4": (192, 64, 4), "192x64x3": (192, 64, 3)}
res = []
for N, causal in itertools.product((1024, 2048, 4096, 8192), (False, True)):
    H = 32; B = 16384 // N
    q, k, v = (torch.randn(B, N, H, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    fl = 4 * B * H * N * N * 64 / (2 if causal else 1)
    row = dict(N=N, causal=causal)
    for rep in range(3):
        for name, tiles in ROWS.items():
            hopper.WS_TILES = base if tiles is None else ((64, 0, tiles),)
            f = lambda: fa2dist.flash_attention(q, k, v, causal=causal)
            f(); torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                f()
            row[f"{name} #{rep}"] = round(fl / triton.testing.do_bench(g.replay, warmup=25, rep=100, return_mode="median") / 1e9, 1)
    hopper.WS_TILES = base
    print(json.dumps(row), flush=True); res.append(row)
json.dump(res, open(os.path.join(OUT, "fwd64b.json"), "w"), indent=1)
