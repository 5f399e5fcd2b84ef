"""The split-role dK/dV kernel (one warpgroup P and dV, the other dS and dK) at d128 against the two-warpgroup kernel."""
import json, os, sys, itertools
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops import attention
OUT = os.environ.get("OUT", "/tmp")
V = {"cur": None, "s128x64": (128, 64, 2), "s64x64": (64, 64, 2), "s64x128": (64, 128, 2)}
torch.manual_seed(0)
for causal, shp in [(False, (2, 4, 2, 777, 4100)), (True, (1, 4, 4, 4200, 4100)), (True, (2, 3, 1, 1000, 1333))]:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True); do = torch.randn_like(out)
    attention._SPLIT128 = None
    ref = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    for name, t in V.items():
        attention._SPLIT128 = t
        g = torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True), (q, k, v), do)
        print("check", shp, causal, name, [round(((a.float() - b.float()).abs().max() / b.float().abs().max()).item(), 5) for a, b in zip(g, ref)], flush=True)
def ms(q, k, v, causal, det):
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det); do = torch.randn_like(out)
    f = lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    return triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median")
res = []
for N, causal in itertools.product((1024, 4096, 16384), (False, True)):
    H = 16; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 2.5 * 4 * B * H * N * N * 128 / (2 if causal else 1)
    row = dict(N=N, causal=causal)
    for rep in range(2):
        for name, t in V.items():
            attention._SPLIT128 = t
            row[f"det {name} #{rep}"] = round(fl / ms(q, k, v, causal, True) / 1e9, 1)
        attention._SPLIT128 = None
        row[f"sp cur #{rep}"] = round(fl / ms(q, k, v, causal, False) / 1e9, 1)
    print(json.dumps(row), flush=True); res.append(row)
json.dump(res, open(os.path.join(OUT, "split128.json"), "w"), indent=1)
