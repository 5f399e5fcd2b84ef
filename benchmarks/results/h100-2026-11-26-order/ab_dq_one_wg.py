"""A/B on the H100: the fused sequence-parallel d128 kernel, dQ split by columns over both warpgroups (head) against
the first warpgroup computing all of dQ (one_wg). 3 interleaved rounds."""
import json, os, sys, time
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", ".")
def use(name):
    hopper.FUSED_DQ_ONE_WG = name == "one_wg"
def grads(q, k, v, do, causal, det):
    return torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det), (q, k, v), do)
def ms(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
t0 = time.time(); lines = []
torch.manual_seed(0)
for causal, shp in [(False, (2, 4, 2, 777, 4100)), (True, (1, 6, 3, 4200, 4100)), (False, (1, 3, 3, 4096, 4096))]:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd"); do = torch.randn_like(out)
    ref = grads(q, k, v, do, causal, True)
    for name in ("head", "one_wg"):
        use(name)
        g = grads(q, k, v, do, causal, False)
        err = [round(((a.float() - b.float()).abs().max() / b.float().abs().max()).item(), 5) for a, b in zip(g, ref)]
        lines.append(f"check {shp} causal={causal} {name}: sp err vs det {err}, dK/dV equal {all(torch.equal(a, b) for a, b in zip(g[1:], ref[1:]))}")
        print(lines[-1], flush=True)
res = []
for N in (4096, 16384):
    for causal in (False, True):
        H = 16; B = 16384 // N
        q, k, v = (torch.randn(B, H, N, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        fl = 4 * B * H * N * N * 128 / (2 if causal else 1)
        row = dict(N=N, causal=causal)
        for rep in range(3):
            for name in ("head", "one_wg"):
                use(name)
                out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd"); do = torch.randn_like(out)
                row.setdefault(f"{name} bwd", []).append(round(2.5 * fl / ms(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True)) / 1e9, 1))
                row.setdefault(f"{name} f+b", []).append(round(3.5 * fl / ms(lambda: grads(q, k, v, do, causal, False)) / 1e9, 1))
        print(json.dumps(row), round(time.time() - t0), "s", flush=True); res.append(row)
        json.dump(dict(checks=lines, rows=res), open(os.path.join(OUT, "ab_dq_one_wg.json"), "w"), indent=1)
