"""Kernel breakdown of one f+b / fwd / bwd step (torch.profiler), fa2dist sp & det vs cuDNN, d128 non-causal."""
import os, sys, json, torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile, ProfilerActivity
sys.path.insert(0, os.getcwd())
import fa2dist
OUT = os.environ.get("OUT", ".")
lines = []
def fa(mode, causal):
    return lambda q, k, v: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=mode == "det")
def cud(causal):
    def run(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run
for D, N, causal in [(128, 16384, False), (128, 4096, False), (128, 1024, False), (64, 4096, True)]:
    B, H = 16384 // N, 2048 // D
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    for name, fn in [("sp", fa("sp", causal)), ("det", fa("det", causal)), ("cudnn", cud(causal))]:
        def fb():
            o = fn(q, k, v); return torch.autograd.grad(o, (q, k, v), do)
        for _ in range(5): fb()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5): fb()
            torch.cuda.synchronize()
        tot = {}
        for e in prof.events():
            if e.device_type.name == "CUDA":
                tot.setdefault(e.name[:90], []).append(e.device_time)
        lines.append(f"== d{D} N{N} causal={causal} {name}: f+b per step (us)")
        s = 0
        for kname, ts in sorted(tot.items(), key=lambda kv: -sum(kv[1])):
            per = sum(ts) / 5; s += per
            lines.append(f"  {per:9.1f}  x{len(ts)//5}  {kname}")
        lines.append(f"  {s:9.1f}  total kernel time")
        # wall per step with events, no L2 flush
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        for _ in range(20): fb()
        en.record(); torch.cuda.synchronize()
        lines.append(f"  {st.elapsed_time(en)/20*1000:9.1f}  wall per step (20 back to back)")
        print("\n".join(lines[-3:]), flush=True)
open(os.path.join(OUT, "prof.txt"), "w").write("\n".join(lines))
print("\n".join(lines))
