"""A/B: the d64 non-causal backward, Triton dK/dV kernel (shipped) vs the Gluon dK/dV kernel (after the row-bias
change); both followed by the Triton dQ kernel. Deterministic mode (the sequence-parallel mode runs the same kernels
at d64)."""
import json, os, sys
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", ".")
SHIP = hopper.WS_BWD
GLUON = tuple((64, False, t) if d == 64 else (d, c, t) for d, c, t in SHIP)
def use(name):
    hopper.WS_BWD = SHIP if name == "triton" else GLUON
torch.manual_seed(0)
lines = []
for shp in [(2, 4, 2, 777, 1100), (1, 8, 8, 130, 1025), (1, 2, 2, 1300, 1000)]:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    do = torch.randn(B, H, NQ, 64, device="cuda", dtype=torch.bfloat16)
    g = {}
    for name in ("triton", "gluon"):
        use(name)
        g[name] = torch.autograd.grad(fa2dist.flash_attention(q, k, v, layout="bhsd", deterministic=True), (q, k, v), do)
    lines.append(f"check {shp}: gluon vs triton " + str([round(((a.float() - b.float()).abs().max() / b.float().abs().max()).item(), 5) for a, b in zip(g["gluon"], g["triton"])]))
    print(lines[-1], flush=True)
res = []
for N in (1024, 2048, 4096, 16384):
    H = 32; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 4 * B * H * N * N * 64
    row = dict(N=N)
    for rep in range(3):
        for name in ("triton", "gluon"):
            use(name)
            out = fa2dist.flash_attention(q, k, v, layout="bhsd", deterministic=True); do = torch.randn_like(out)
            row[f"{name} bwd #{rep}"] = round(2.5 * fl / triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), warmup=25, rep=100, return_mode="median") / 1e9, 1)
            def fb():
                return torch.autograd.grad(fa2dist.flash_attention(q, k, v, layout="bhsd", deterministic=True), (q, k, v), do)
            row[f"{name} f+b #{rep}"] = round(3.5 * fl / triton.testing.do_bench(fb, warmup=25, rep=100, return_mode="median") / 1e9, 1)
    print(json.dumps(row), flush=True); res.append(row)
json.dump(dict(checks=lines, rows=res), open(os.path.join(OUT, "ab_d64.json"), "w"), indent=1)
# Part 2: the d64 causal forward from 2k keys, one 192x64 program per SM (shipped) vs two 128x64 programs per SM.
TILES = hopper.WS_TILES
TWO = tuple(r for r in TILES if not (r[0] == 64 and r[1] == 2048)) + ((64, 8192, (192, 64, 4, 1)),)
res2 = []
for N in (2048, 4096, 8192):
    H = 32; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for causal in (True, False):
        fl = 4 * B * H * N * N * 64 / (2 if causal else 1)
        row = dict(part="fwd64", N=N, causal=causal)
        for rep in range(3):
            for name, tiles in (("192x64", TILES), ("2x128x64", TWO)):
                hopper.WS_TILES = tiles
                row[f"{name} #{rep}"] = round(fl / triton.testing.do_bench(lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd"), warmup=25, rep=100, return_mode="median") / 1e9, 1)
        hopper.WS_TILES = TILES
        print(json.dumps(row), flush=True); res2.append(row)
json.dump(dict(checks=lines, rows=res, fwd=res2), open(os.path.join(OUT, "ab_d64.json"), "w"), indent=1)
