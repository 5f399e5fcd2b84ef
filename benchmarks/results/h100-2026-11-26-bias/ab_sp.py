"""A/B: the fused sequence-parallel d128 kernel, HEAD (old) vs dP^T starting from -delta (new)."""
import json, os, sys, itertools, importlib.util
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops import attention
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", ".")
spec = importlib.util.spec_from_file_location("hopper_old", os.environ.get("OLD_HOPPER", "hopper_old.py"))
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
def use(name):
    attention.attn_bwd_dkdv_ws_kernel = old.attn_bwd_dkdv_ws_kernel if name == "old" else hopper.attn_bwd_dkdv_ws_kernel
torch.manual_seed(0)
lines = []
for causal, shp in [(False, (2, 4, 2, 777, 4100)), (True, (1, 4, 4, 4200, 4100)), (False, (1, 8, 8, 130, 4097)), (True, (2, 3, 1, 5000, 4200))]:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True); do = torch.randn_like(out)
    ref = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    for name in ("old", "new"):
        use(name)
        g = torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False), (q, k, v), do)
        lines.append(f"check {shp} causal={causal} {name} " + str([round(((a.float() - b.float()).abs().max() / b.float().abs().max()).item(), 5) for a, b in zip(g, ref)]))
        print(lines[-1], flush=True)
def ms(q, k, v, causal, mode):
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False); do = torch.randn_like(out)
    if mode == "bwd":
        return triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), warmup=25, rep=100, return_mode="median")
    def fb():
        return torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False), (q, k, v), do)
    return triton.testing.do_bench(fb, warmup=25, rep=100, return_mode="median")
res = []
for N, causal in itertools.product((4096, 16384), (False, True)):
    H = 16; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 4 * B * H * N * N * 128 / (2 if causal else 1)
    row = dict(N=N, causal=causal)
    for rep in range(3):
        for name in ("old", "new"):
            use(name)
            row[f"{name} bwd #{rep}"] = round(2.5 * fl / ms(q, k, v, causal, "bwd") / 1e9, 1)
            row[f"{name} f+b #{rep}"] = round(3.5 * fl / ms(q, k, v, causal, "fb") / 1e9, 1)
    print(json.dumps(row), flush=True); res.append(row)
json.dump(dict(checks=lines, rows=res), open(os.path.join(OUT, "ab_sp.json"), "w"), indent=1)
