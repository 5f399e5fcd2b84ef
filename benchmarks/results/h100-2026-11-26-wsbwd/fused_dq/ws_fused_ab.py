import json, os, sys, itertools
import torch, triton
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops import attention
OUT = os.environ.get("OUT", "/tmp")

def prov(name, causal):
    if name.startswith("fa2dist"):
        det = name == "fa2dist-det"
        return lambda q, k, v: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det)
    def run(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run

def ms(fn, q, k, v, mode):
    out = fn(q, k, v); do = torch.randn_like(out)
    if mode == "bwd":
        step = lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    else:
        step = lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do)
    return triton.testing.do_bench(step, warmup=25, rep=120, return_mode="median")

res = []
for d, N, causal in [(128, n, c) for n in (1024, 4096, 16384) for c in (False, True)] + [(64, n, True) for n in (1024, 4096, 16384)]:
    H = 2048 // d; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    f = 4 * B * H * N * N * d / (2 if causal else 1)
    row = dict(d=d, N=N, causal=causal)
    for mode, mult in (("bwd", 2.5), ("fwdbwd", 3.5)):
        for rep in range(2):
            for fused in (True, False):
                attention.WS_FUSED_DQ = fused
                row[f"{mode} sp fused={fused} #{rep}"] = round(mult * f / ms(prov("fa2dist-sp", causal), q, k, v, mode) / 1e9, 1)
        attention.WS_FUSED_DQ = True
        row[f"{mode} det"] = round(mult * f / ms(prov("fa2dist-det", causal), q, k, v, mode) / 1e9, 1)
        row[f"{mode} cudnn"] = round(mult * f / ms(prov("cudnn", causal), q, k, v, mode) / 1e9, 1)
    print(json.dumps(row), flush=True); res.append(row)
    json.dump(res, open(os.path.join(OUT, "ws_fused_ab.json"), "w"), indent=1)

from torch.profiler import profile, ProfilerActivity
brk = {}
for causal in (False, True):
    N = 4096; d = 128; H = 16; B = 4
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fn = prov("fa2dist-sp", causal); out = fn(q, k, v); do = torch.randn_like(out)
    for _ in range(3): torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(5): torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
        torch.cuda.synchronize()
    tab = {e.key[:60]: round(e.device_time_total / 5, 1) for e in p.key_averages() if e.device_time_total}
    brk[f"sp fused causal={causal}"] = tab
    print(causal, tab, flush=True)
json.dump(brk, open(os.path.join(OUT, "ws_fused_breakdown.json"), "w"), indent=1)
