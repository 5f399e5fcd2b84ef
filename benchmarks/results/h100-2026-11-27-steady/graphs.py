import os, sys, json
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import fa2dist
from bench_attention import _graph_ms
OUT = os.environ.get("OUT", ".")
shapes = [(128, 1024, False), (128, 2048, False), (64, 1024, False), (64, 2048, False), (128, 1024, True)]
res = {}
for r in range(4):
    for d, n, causal in shapes:
        b, h = 16384 // n, 2048 // d
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16)
        flops = 4 * b * h * n * n * d * (0.5 if causal else 1) * 3.5
        names = ["cudnn", "det", "sp"] if r % 2 == 0 else ["sp", "det", "cudnn"]
        key = f"d{d} n{n} {'causal' if causal else 'full'}"
        for name in names:
            def step(name=name):
                if name == "cudnn":
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                else:
                    o = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=name == "det")
                return torch.autograd.grad(o, (q, k, v), do)
            ms = _graph_ms(step, 300)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
json.dump(res, open(os.path.join(OUT, "graphs.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          f" det/cudnn {med['det'] / med['cudnn']:.3f} sp/cudnn {med['sp'] / med['cudnn']:.3f}")
