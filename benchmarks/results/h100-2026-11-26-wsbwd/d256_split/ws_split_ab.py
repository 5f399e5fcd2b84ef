import json, os, sys, itertools
import torch, triton
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from dataclasses import replace
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.configs import select_config
OUT = os.environ.get("OUT", "/tmp")
tri = replace(select_config(torch.device("cuda")), warp_specialize=False)

def prov(name, causal):
    if name.startswith("fa2dist"):
        det = "-det" in name
        cfg = tri if name.endswith("triton") else None
        return lambda q, k, v: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det, config=cfg)
    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[name]
    def run(q, k, v):
        with sdpa_kernel(be):
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
for N, causal in itertools.product((1024, 4096, 16384), (False, True)):
    d = 256; H = 8; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    f = 4 * B * H * N * N * d / (2 if causal else 1)
    row = dict(d=d, N=N, causal=causal)
    for mode, mult in (("bwd", 2.5), ("fwdbwd", 3.5)):
        for name in ("fa2dist-det", "fa2dist-det-triton", "fa2dist-sp", "flash", "cudnn"):
            row[f"{mode} {name}"] = round(mult * f / ms(prov(name, causal), q, k, v, mode) / 1e9, 1)
    print(json.dumps(row), flush=True); res.append(row)
    json.dump(res, open(os.path.join(OUT, "ws_split_ab.json"), "w"), indent=1)

from torch.profiler import profile, ProfilerActivity
brk = {}
for causal in (False, True):
    N = 4096; d = 256; H = 8; B = 4
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    for name in ("fa2dist-det", "fa2dist-det-triton"):
        fn = prov(name, causal); out = fn(q, k, v); do = torch.randn_like(out)
        for _ in range(3): torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(5): torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
            torch.cuda.synchronize()
        tab = {e.key[:60]: round(e.device_time_total / 5, 1) for e in p.key_averages() if e.device_time_total}
        brk[f"{name} causal={causal}"] = tab
        print(name, causal, tab, flush=True)
json.dump(brk, open(os.path.join(OUT, "ws_split_breakdown.json"), "w"), indent=1)
