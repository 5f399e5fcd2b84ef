"""Host time per call at a tiny shape (the GPU idles): fa2dist against SDPA, and where fa2dist's goes."""
import cProfile, io, os, pstats, sys, time
import torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.getcwd())
import fa2dist
OUT = os.environ.get("OUT", "/tmp")
B, H, N, D = 1, 16, 256, 128
q, k, v = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
qs, ks, vs = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
do = torch.randn_like(q); dos = do.transpose(1, 2)
def fa_f():
    with torch.no_grad():
        fa2dist.flash_attention(q, k, v, causal=True)
def fa_fb():
    torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=True), (q, k, v), do)
def sd_f():
    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
def sd_fb():
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        torch.autograd.grad(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True), (qs, ks, vs), dos)
lines = []
for fn in (fa_f, fa_fb, sd_f, sd_fb):
    for _ in range(30): fn()
    torch.cuda.synchronize()
    best = []
    for r in range(5):
        n = 300; t = time.perf_counter()
        for _ in range(n): fn()
        best.append((time.perf_counter() - t) / n * 1e6)
        torch.cuda.synchronize()
    lines.append(f"{fn.__name__}: {min(best):.0f} us per call (best of 5 loops of 300; all {[round(b) for b in best]})")
    print(lines[-1], flush=True)
for fn in (fa_f, fa_fb):
    pr = cProfile.Profile(); pr.enable()
    for _ in range(300): fn()
    pr.disable(); torch.cuda.synchronize()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(40)
    lines.append(s.getvalue())
open(os.path.join(OUT, "host.txt"), "w").write("\n".join(lines))
