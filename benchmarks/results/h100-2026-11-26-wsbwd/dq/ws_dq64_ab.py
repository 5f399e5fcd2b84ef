import json, os, sys
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", "/tmp")
def ms(q, k, v, causal):
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True); do = torch.randn_like(out)
    return triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), warmup=25, rep=120, return_mode="median")
base = hopper.WS_BWD_DQ
# correctness first: d64 causal, GQA, ragged, against the Triton dQ pass
torch.manual_seed(0)
for shp in [(2, 4, 2, 555, 555), (1, 2, 2, 1031, 4100), (1, 4, 4, 300, 64)]:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    out = fa2dist.flash_attention(q, k, v, causal=True, layout="bhsd", deterministic=True); do = torch.randn_like(out)
    hopper.WS_BWD_DQ = base
    ref = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    for t in ((128, 128, 2), (128, 64, 2), (128, 64, 3)):
        hopper.WS_BWD_DQ = base + ((64, t),)
        g = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
        print("check", shp, t, "dq rel err vs triton dq:", ((g[0].float() - ref[0].float()).abs().max() / ref[0].float().abs().max()).item(), flush=True)
res = []
for N in (1024, 4096, 16384):
    H = 32; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 2.5 * 4 * B * H * N * N * 64 / 2
    row = dict(d=64, N=N, causal=True)
    for rep in range(2):
        for t in (None, (128, 128, 2), (128, 64, 2), (128, 64, 3)):
            hopper.WS_BWD_DQ = base + (() if t is None else ((64, t),))
            row[f"bwd det dq={t} #{rep}"] = round(fl / ms(q, k, v, True) / 1e9, 1)
    print(json.dumps(row), flush=True); res.append(row)
json.dump(res, open(os.path.join(OUT, "ws_dq64_ab.json"), "w"), indent=1)
