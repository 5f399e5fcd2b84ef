import json, os, sys, itertools, time
import torch, triton
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from dataclasses import replace
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.configs import select_config
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", "/tmp")
dev = torch.device("cuda")
base = select_config(dev)
tri = replace(base, warp_specialize=False)

def prov(name, causal):
    if name.startswith("fa2dist"):
        det = "det" in name
        cfg = tri if name.endswith("triton") else None
        return lambda q, k, v: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det, config=cfg)
    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[name]
    def run(q, k, v):
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run

def bwd_ms(fn, q, k, v):
    out = fn(q, k, v); do = torch.randn_like(out)
    return triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), warmup=25, rep=100, return_mode="median")

res = []
d = int(os.environ.get("D", 128))
variants = [(64, 128, s) for s in (2, 3, 4)]
for N, causal in itertools.product((1024, 4096, 16384), (False, True)):
    H = 2048 // d; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 2.5 * 4 * B * H * N * N * d / (2 if causal else 1)
    row = dict(d=d, N=N, causal=causal)
    for tiles in variants:
        hopper.WS_BWD_TILES[128] = tiles
        try:
            row[f"det-ws{tiles}"] = fl / bwd_ms(prov("fa2dist-det", causal), q, k, v) / 1e9
        except Exception as e:
            row[f"det-ws{tiles}"] = repr(e)[:200]
    hopper.WS_BWD_TILES[128] = (64, 128, 2)
    for name in ("fa2dist-det-triton", "fa2dist-sp", "cudnn", "flash"):
        row[name] = fl / bwd_ms(prov(name, causal), q, k, v) / 1e9
    print(json.dumps(row), flush=True); res.append(row)
json.dump(res, open(os.path.join(OUT, f"ws_bwd_ab_d{d}.json"), "w"), indent=1)

# per-kernel breakdown at 4k
from torch.profiler import profile, ProfilerActivity
brk = {}
for causal in (False, True):
    N = 4096; H = 2048 // d; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    for name in ("fa2dist-det", "fa2dist-det-triton", "fa2dist-sp", "cudnn"):
        fn = prov(name, causal); out = fn(q, k, v); do = torch.randn_like(out)
        for _ in range(3): torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(5): torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
            torch.cuda.synchronize()
        tab = {}
        for e in p.key_averages():
            if e.device_type.name == "CUDA" or getattr(e, "device_time_total", 0):
                t = getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)
                if t: tab[e.key[:80]] = round(t / 5, 1)
        brk[f"{name} causal={causal}"] = tab
        print(name, causal, tab, flush=True)
json.dump(brk, open(os.path.join(OUT, f"ws_bwd_breakdown_d{d}.json"), "w"), indent=1)
