"""K (and V) in registers as the A operand of S^T = K Q^T (and dP^T = V dO^T) in the dK/dV kernel."""
import json, os, sys, itertools
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops import attention
OUT = os.environ.get("OUT", "/tmp")
torch.manual_seed(0)
for causal, shp in [(False, (2, 4, 2, 777, 4100)), (True, (1, 4, 4, 4200, 4100))]:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True); do = torch.randn_like(out)
    attention._WS_EXP = dict(ABL=0, KREG=0)
    ref = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    for kreg in (1, 2):
        for det in (True, False):
            attention._WS_EXP = dict(ABL=0, KREG=kreg)
            g = torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det), (q, k, v), do)
            print("check", shp, causal, kreg, det, [round(((a.float() - b.float()).abs().max() / b.float().abs().max()).item(), 5) for a, b in zip(g, ref)], flush=True)
def ms(q, k, v, causal, det):
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det); do = torch.randn_like(out)
    return triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), warmup=25, rep=100, return_mode="median")
res = []
for N, causal in itertools.product((4096, 16384), (False, True)):
    H = 16; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 2.5 * 4 * B * H * N * N * 128 / (2 if causal else 1)
    row = dict(N=N, causal=causal)
    for rep in range(2):
        for kreg in (0, 1, 2):
            attention._WS_EXP = dict(ABL=0, KREG=kreg)
            row[f"det k{kreg} #{rep}"] = round(fl / ms(q, k, v, causal, True) / 1e9, 1)
            row[f"sp k{kreg} #{rep}"] = round(fl / ms(q, k, v, causal, False) / 1e9, 1)
    print(json.dumps(row), flush=True); res.append(row)
json.dump(res, open(os.path.join(OUT, "kreg.json"), "w"), indent=1)
