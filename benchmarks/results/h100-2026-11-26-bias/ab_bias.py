"""A/B 1: deterministic dK/dV kernel with biased accumulators (-LSE/scale, -delta) vs shipped.
"""
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
def ref64(q, k, v, do, causal):
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    g = qd.shape[1] // kd.shape[1]
    ke, ve = kd.repeat_interleave(g, 1), vd.repeat_interleave(g, 1)
    s = qd @ ke.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        nq, nk = q.shape[2], k.shape[2]
        i = torch.arange(nq, device=q.device)[:, None]; j = torch.arange(nk, device=q.device)[None, :]
        s = s.masked_fill(j > i + nk - nq, float("-inf"))
    o = torch.nan_to_num(torch.softmax(s, -1)) @ ve
    return torch.autograd.grad(o, (qd, kd, vd), do.double())
for D, causal, shp in [(128, False, (2, 4, 2, 777, 1100)), (128, True, (1, 4, 4, 1200, 1100)), (128, True, (2, 3, 1, 1000, 1300)),
                       (64, True, (2, 4, 2, 777, 1100)), (64, True, (1, 2, 2, 1300, 1000)), (128, False, (1, 8, 8, 130, 1025))]:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    do = torch.randn(B, H, NQ, D, device="cuda", dtype=torch.bfloat16)
    r = ref64(q, k, v, do, causal)
    gs = {}
    for name in ("old", "bias"):
        use(name)
        gs[name] = [torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True), (q, k, v), do) for _ in range(2)]
        same = all(torch.equal(a, b) for a, b in zip(*gs[name]))
        err = [round(((a.double() - b).abs().max() / b.abs().max()).item(), 5) for a, b in zip(gs[name][0], r)]
        lines.append(f"check d{D} {shp} causal={causal} {name}: err vs fp64 {err} repeat bitwise {same}")
        print(lines[-1], flush=True)
def bwd_ms(q, k, v, causal, det):
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det); do = torch.randn_like(out)
    return triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), warmup=25, rep=100, return_mode="median")
def fb_ms(q, k, v, causal, det):
    do = torch.randn_like(q)
    def fb():
        return torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det), (q, k, v), do)
    return triton.testing.do_bench(fb, warmup=25, rep=100, return_mode="median")
res = []
for D, N, causal in [(128, 1024, False), (128, 1024, True), (128, 4096, False), (128, 4096, True), (128, 16384, False), (128, 16384, True),
                     (64, 1024, True), (64, 2048, True), (64, 4096, True), (64, 16384, True)]:
    H = 2048 // D; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 4 * B * H * N * N * D / (2 if causal else 1)
    row = dict(test="bias", D=D, N=N, causal=causal)
    for rep in range(3):
        for name in ("old", "bias"):
            use(name)
            row[f"{name} bwd #{rep}"] = round(2.5 * fl / bwd_ms(q, k, v, causal, True) / 1e9, 1)
    print(json.dumps(row), flush=True); res.append(row)
json.dump(dict(checks=lines, rows=res), open(os.path.join(OUT, "ab_bias2.json"), "w"), indent=1)
