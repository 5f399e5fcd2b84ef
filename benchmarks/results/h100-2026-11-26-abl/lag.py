"""The fused sequence-parallel dK/dV/dQ kernel: dQ of the previous step (LAG) against the same step."""
import json, os, sys, itertools
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops import attention
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", "/tmp")
torch.manual_seed(0)
hopper.WS_FUSED_DQ = ((128, 0),)  # fused at every length here
for causal, shp in [(False, (2, 4, 2, 777, 4100)), (True, (1, 4, 4, 4200, 4100)), (True, (2, 3, 1, 1000, 1333)), (False, (1, 8, 8, 64, 130)), (True, (3, 2, 2, 1, 700)), (True, (1, 2, 2, 300, 128))]:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True); do = torch.randn_like(out)
    ref = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    for lag in (False, True):
        attention._WS_EXP = dict(LAG=lag)
        g = torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False), (q, k, v), do)
        print("check", shp, causal, lag, [round(((a.float() - b.float()).abs().max() / b.float().abs().max()).item(), 5) for a, b in zip(g, ref)], flush=True)
def ms(q, k, v, causal, det):
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det); do = torch.randn_like(out)
    return triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), warmup=25, rep=100, return_mode="median")
res = []
for N, causal in itertools.product((1024, 4096, 16384), (False, True)):
    H = 16; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 2.5 * 4 * B * H * N * N * 128 / (2 if causal else 1)
    row = dict(N=N, causal=causal)
    for rep in range(3):
        attention._WS_EXP = {}
        row[f"det #{rep}"] = round(fl / ms(q, k, v, causal, True) / 1e9, 1)
        for lag in (False, True):
            attention._WS_EXP = dict(LAG=lag)
            row[f"sp lag{lag:d} #{rep}"] = round(fl / ms(q, k, v, causal, False) / 1e9, 1)
    attention._WS_EXP = {}
    print(json.dumps(row), flush=True); res.append(row)
json.dump(res, open(os.path.join(OUT, "lag.json"), "w"), indent=1)
