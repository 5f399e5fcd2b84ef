import json, os, sys, itertools
import torch, triton
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", "/tmp")

def prov(name, causal):
    if name.startswith("fa2dist"):
        det = "-det" in name
        return lambda q, k, v: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det)
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

V = {256: [None, (128, 32, 2), (128, 32, 3)], 128: [None, (128, 64, 2), (128, 64, 3), (128, 128, 2)]}
res = []
for d in (256, 128):
    for N, causal in itertools.product((1024, 4096, 16384), (False, True)):
        H = 2048 // d; B = 16384 // N
        q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        f = 4 * B * H * N * N * d / (2 if causal else 1)
        row = dict(d=d, N=N, causal=causal)
        for t in V[d]:
            hopper.WS_BWD_DQ = () if t is None else ((d, t),)
            try:
                row[f"bwd det dq={t}"] = round(2.5 * f / ms(prov("fa2dist-det", causal), q, k, v, "bwd") / 1e9, 1)
            except Exception as e:
                row[f"bwd det dq={t}"] = repr(e)[:200]
        hopper.WS_BWD_DQ = ((256, (128, 32, 2)),)
        if d == 256:
            for mode, mult in (("fwdbwd", 3.5),):
                for name in ("fa2dist-det", "fa2dist-sp", "flash", "cudnn"):
                    row[f"{mode} {name}"] = round(mult * f / ms(prov(name, causal), q, k, v, mode) / 1e9, 1)
            row["bwd cudnn"] = round(2.5 * f / ms(prov("cudnn", causal), q, k, v, "bwd") / 1e9, 1)
            row["bwd flash"] = round(2.5 * f / ms(prov("flash", causal), q, k, v, "bwd") / 1e9, 1)
        print(json.dumps(row), flush=True); res.append(row)
        json.dump(res, open(os.path.join(OUT, "ws_dq_ab.json"), "w"), indent=1)
