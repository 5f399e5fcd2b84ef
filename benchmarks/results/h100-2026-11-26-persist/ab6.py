"""A/B on the H100: the sequence-parallel mode's fused dK/dV/dQ kernel (the copy engine adds dQ) below 4k keys at
d128 and at d64, against the deterministic kernels (dQ pass). Checks against the deterministic gradients, then
forward+backward CUDA-graph replays, 4 interleaved rounds."""
import json, os, sys, time
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import fa2dist
from fa2dist.ops.kernels import hopper
from bench_attention import _graph_ms
OUT = os.environ.get("OUT", ".")
def use(d, fused):
    hopper.WS_FUSED_DQ = ((128, 4096),) + (((d, 0),) if fused else ())
def grads(q, k, v, do, causal, det):
    return torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det), (q, k, v), do)
res = dict(checks=[], rows=[]); t0 = time.time()
def log(kind, x):
    res[kind].append(x); print(x if isinstance(x, str) else json.dumps(x), round(time.time() - t0), "s", flush=True)
    json.dump(res, open(os.path.join(OUT, "ab6.json"), "w"), indent=1)
torch.manual_seed(0)
for d, causal, (B, H, HK, NQ, NK) in [(64, False, (2, 4, 2, 777, 1500)), (64, True, (3, 5, 5, 1100, 1000)),
                                       (64, True, (1, 4, 4, 300, 64)), (128, False, (2, 4, 2, 777, 1500)),
                                       (128, True, (2, 3, 3, 1000, 300)), (64, False, (1, 4, 4, 4100, 4100))]:
    q = torch.randn(B, H, NQ, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    do = torch.randn_like(q)
    mask = torch.ones(NQ, NK, dtype=torch.bool, device="cuda").tril(NK - NQ) if causal else None
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(qd, kd.repeat_interleave(H // HK, 1), vd.repeat_interleave(H // HK, 1), attn_mask=mask), (qd, kd, vd), do.double())
    use(d, False); g0 = grads(q, k, v, do, causal, True)
    use(d, True); g1 = grads(q, k, v, do, causal, False)
    e0 = [round((a.double() - r).nan_to_num().abs().max().item(), 5) for a, r in zip(g0, ref)]
    e1 = [round((a.double() - r).nan_to_num().abs().max().item(), 5) for a, r in zip(g1, ref)]
    log("checks", f"d{d} {(B, H, HK, NQ, NK)} causal={causal}: max err vs f64 det {e0}, fused sp {e1}, dk/dv equal {[torch.equal(a, b) for a, b in zip(g0[1:], g1[1:])]}")
for d, N, causal in [(128, 1024, False), (128, 1024, True), (128, 2048, False), (128, 2048, True), (128, 3072, False),
                     (128, 3072, True), (64, 1024, False), (64, 1024, True), (64, 4096, False), (64, 4096, True),
                     (64, 16384, False), (64, 16384, True)]:
    H = 2048 // d; B = max(16384 // N, 1)
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    fl = 3.5 * 4 * B * H * N * N * d / (2 if causal else 1)
    row = dict(d=d, N=N, causal=causal)
    for rep in range(4):
        for name in ("det_kernels", "fused"):
            use(d, name == "fused")
            row.setdefault(name, []).append(round(fl / _graph_ms(lambda: grads(q, k, v, do, causal, False), 100) / 1e9, 1))
    use(d, False)
    log("rows", row)
