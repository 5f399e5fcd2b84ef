import json, os, sys, itertools
import torch, triton
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from dataclasses import replace
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.configs import select_config
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", "/tmp")
tri = replace(select_config(torch.device("cuda")), warp_specialize=False)

def prov(name, causal):
    if name.startswith("fa2dist"):
        cfg = tri if name.endswith("triton") else None
        return lambda q, k, v: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True, config=cfg)
    def run(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run

def ms(fn, q, k, v):
    out = fn(q, k, v); do = torch.randn_like(out)
    return triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), warmup=25, rep=150, return_mode="median")

res = []
V = [(64, 128, 2, False), (64, 128, 2, True), (64, 128, 3, True), (64, 128, 3, False)]
for d in (128, 64):
    for N, causal in itertools.product((1024, 4096, 16384), (False, True)):
        H = 2048 // d; B = 16384 // N
        q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        fl = 2.5 * 4 * B * H * N * N * d / (2 if causal else 1)
        row = dict(d=d, N=N, causal=causal)
        for rep in range(2):
            for t in V:
                hopper.WS_BWD_TILES[d] = t
                try:
                    row[f"ws{t} #{rep}"] = round(fl / ms(prov("fa2dist-det", causal), q, k, v) / 1e9, 1)
                except Exception as e:
                    row[f"ws{t} #{rep}"] = repr(e)[:300]
            row[f"triton #{rep}"] = round(fl / ms(prov("fa2dist-det-triton", causal), q, k, v) / 1e9, 1)
        row["cudnn"] = round(fl / ms(prov("cudnn", causal), q, k, v) / 1e9, 1)
        print(json.dumps(row), flush=True); res.append(row)
        json.dump(res, open(os.path.join(OUT, "ws_bwd_ab3.json"), "w"), indent=1)
    if d == 64:
        del hopper.WS_BWD_TILES[64]
    else:
        hopper.WS_BWD_TILES[128] = (64, 128, 2)
