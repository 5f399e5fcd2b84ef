"""d128 sequence-parallel backward at 1k-2k keys: fused dQ (copy-engine add) vs the dQ pass, on the final kernels."""
import json, os, sys, itertools
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops import attention
OUT = os.environ.get("OUT", ".")
res = []
for N, causal in itertools.product((1024, 2048, 3072), (False, True)):
    H = 16; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 4 * B * H * N * N * 128 / (2 if causal else 1)
    row = dict(N=N, causal=causal)
    for rep in range(3):
        for name, thr in (("pass", 4096), ("fused", 1024)):
            attention.ws_fused_dq = lambda d, n, thr=thr: d == 128 and n >= thr
            out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False); do = torch.randn_like(out)
            row[f"{name} bwd #{rep}"] = round(2.5 * fl / triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), warmup=25, rep=100, return_mode="median") / 1e9, 1)
            def fb():
                return torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False), (q, k, v), do)
            row[f"{name} f+b #{rep}"] = round(3.5 * fl / triton.testing.do_bench(fb, warmup=25, rep=100, return_mode="median") / 1e9, 1)
    print(json.dumps(row), flush=True); res.append(row)
json.dump(res, open(os.path.join(OUT, "ab_fused2k.json"), "w"), indent=1)
