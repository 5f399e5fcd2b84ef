"""A/B on the H100: persistent grids for the deterministic dK/dV kernel (d64, d128) and the Gluon dQ pass (d128,
d256), each on or off. Bitwise checks against both off, then forward+backward CUDA-graph replays (det and sp), 3
interleaved rounds."""
import json, os, sys, time
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import fa2dist
from fa2dist.ops.kernels import hopper
from bench_attention import _graph_ms
OUT = os.environ.get("OUT", ".")
BWD0, DQ0 = hopper.WS_BWD_PERSISTENT, hopper.WS_DQ_PERSISTENT
VARIANTS = ("none", "dq", "dkdv", "both")
def use(name):
    hopper.WS_BWD_PERSISTENT = BWD0 if name in ("dkdv", "both") else ()
    hopper.WS_DQ_PERSISTENT = DQ0 if name in ("dq", "both") else ()
def grads(q, k, v, do, causal, det):
    return torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det), (q, k, v), do)
res = dict(checks=[], rows=[]); t0 = time.time()
def log(kind, x):
    res[kind].append(x); print(x if isinstance(x, str) else json.dumps(x), round(time.time() - t0), "s", flush=True)
    json.dump(res, open(os.path.join(OUT, "ab4.json"), "w"), indent=1)
torch.manual_seed(0)
for d, causal, (B, H, HK, NQ, NK) in [(128, False, (2, 4, 2, 777, 1500)), (128, True, (1, 6, 3, 4200, 4100)),
                                       (64, True, (3, 5, 5, 1100, 1000)), (64, False, (40, 32, 32, 1024, 1024)),
                                       (128, True, (2, 3, 3, 1000, 300)), (256, False, (1, 4, 2, 333, 517)),
                                       (128, False, (1, 2, 1, 129, 1031)), (256, True, (2, 2, 2, 1031, 1031))]:
    q = torch.randn(B, H, NQ, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    do = torch.randn_like(q)
    use("none"); g0 = grads(q, k, v, do, causal, True)
    for name in VARIANTS[1:]:
        use(name); g = grads(q, k, v, do, causal, True)
        log("checks", f"d{d} {(B, H, HK, NQ, NK)} causal={causal} {name}: dq,dk,dv equal {[torch.equal(a, b) for a, b in zip(g, g0)]}")
for d, N, causal in [(128, 1024, False), (128, 2048, False), (128, 4096, False), (128, 16384, False), (128, 1024, True),
                     (128, 4096, True), (128, 16384, True), (64, 1024, False), (64, 4096, False), (64, 1024, True),
                     (64, 4096, True), (256, 1024, False), (256, 4096, True)]:
    H = 2048 // d; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    fl = 3.5 * 4 * B * H * N * N * d / (2 if causal else 1)
    row = dict(d=d, N=N, causal=causal)
    for rep in range(3):
        for name in VARIANTS:
            use(name)
            row.setdefault(f"{name} det", []).append(round(fl / _graph_ms(lambda: grads(q, k, v, do, causal, True), 100) / 1e9, 1))
            if d == 64 or N < 4096:
                continue
            row.setdefault(f"{name} sp", []).append(round(fl / _graph_ms(lambda: grads(q, k, v, do, causal, False), 100) / 1e9, 1))
    log("rows", row)
