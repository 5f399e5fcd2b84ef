"""d64 forward tile stages: two 128x64 programs per SM below 2k (2, 3, 4 stages); one 192x128 program from 2k
(3 or 4 stages). Kernel time from CUDA-graph replays."""
import json, os, sys
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "benchmarks")
import fa2dist
from fa2dist.ops.kernels import hopper
from bench_attention import _graph_ms
OUT = os.environ.get("OUT", ".")
SHIP = hopper.WS_TILES
def with_row(row):
    return tuple(r for r in SHIP if r[0] != 64) + ((64, 0, row),)
SHORT = {"2x128x64x3": (128, 64, 3, 2), "2x128x64x4": (128, 64, 4, 2), "2x128x64x2": (128, 64, 2, 2)}
LONG = {"192x128x3": (192, 128, 3, 1), "192x128x4": (192, 128, 4, 1)}
res = []
for N, variants in [(1024, SHORT), (1536, SHORT), (2048, LONG), (4096, LONG), (16384, LONG)]:
    H = 32; B = max(1, 16384 // N)
    q, k, v = (torch.randn(B, H, N, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = None
    for causal in (False, True):
        fl = 4 * B * H * N * N * 64 / (2 if causal else 1)
        row = dict(N=N, causal=causal)
        for rep in range(3):
            for name, tiles in variants.items():
                hopper.WS_TILES = with_row(tiles)
                row[f"{name} #{rep}"] = round(fl / _graph_ms(lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd"), 100) / 1e9, 1)
        print(json.dumps(row), flush=True); res.append(row)
hopper.WS_TILES = SHIP
json.dump(res, open(os.path.join(OUT, "ab_fwd64.json"), "w"), indent=1)
