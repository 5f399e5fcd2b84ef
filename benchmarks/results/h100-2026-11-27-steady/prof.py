import os, sys, json, collections
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile, ProfilerActivity
sys.path.insert(0, os.getcwd())
import fa2dist
OUT = os.environ.get("OUT", ".")
res = {}
for n, causal in [(1024, False), (1024, True), (4096, False)]:
    d = 128; b, h = 16384 // n, 2048 // d
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16)
    provs = {
        "sp": lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False),
        "det": lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True),
        "cudnn": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
    }
    for name, fn in provs.items():
        def step():
            if name == "cudnn":
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    o = fn()
                    return torch.autograd.grad(o, (q, k, v), do)
            o = fn()
            return torch.autograd.grad(o, (q, k, v), do)
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        iters = 20
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                step()
            torch.cuda.synchronize()
        tot = collections.defaultdict(float)
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                tot[e.name[:70]] += e.device_time / iters
        key = f"n{n} {'causal' if causal else 'full'} {name}"
        res[key] = dict(sorted(tot.items(), key=lambda x: -x[1]))
        print(key, f"sum {sum(tot.values()):.0f} us")
        for kname, us in list(res[key].items())[:8]:
            print(f"   {us:8.1f}  {kname}")
json.dump(res, open(os.path.join(OUT, "profile.json"), "w"), indent=1)
