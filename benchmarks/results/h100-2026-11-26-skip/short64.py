"""d64 forward at short lengths: two programs per SM (Gluon 128x64) against the Triton forward (CUDA-graph replays)."""
import json, os, sys
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", "/tmp")
base = hopper.WS_TILES
V = {"triton": tuple(r for r in base if not (r[0] == 64 and r[1] == 0)), "2cta": base}
res = []
for B, N, H, causal in [(64, 256, 6, True), (64, 256, 6, False), (32, 512, 32, True), (32, 512, 32, False), (64, 256, 32, True),
                        (16, 1024, 32, True), (16, 1024, 32, False), (8, 1536, 32, True)]:
    q, k, v = (torch.randn(B, N, H, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    fl = 4 * B * H * N * N * 64 / (2 if causal else 1)
    row = dict(B=B, N=N, H=H, causal=causal)
    for rep in range(3):
        for name, rows in V.items():
            hopper.WS_TILES = rows
            f = lambda: fa2dist.flash_attention(q, k, v, causal=causal)
            f(); torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                f()
            row[f"{name} #{rep}"] = round(fl / triton.testing.do_bench(g.replay, warmup=25, rep=100, return_mode="median") / 1e9, 1)
    hopper.WS_TILES = base
    print(json.dumps(row), flush=True); res.append(row)
json.dump(res, open(os.path.join(OUT, "short64.json"), "w"), indent=1)
