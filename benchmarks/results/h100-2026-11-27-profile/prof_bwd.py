"""One forward+backward for Nsight Compute: python prof_bwd.py PROVIDER HEAD_DIM SEQLEN CAUSAL (fa2dist-det,
fa2dist-sp, cudnn or flash; bf16, 16k tokens, hidden 2048). Two warm-up passes, then one between
cudaProfilerStart/Stop (ncu --profile-from-start off)."""
import os, sys
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.getcwd())
import fa2dist
prov, d, n, causal = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
b, h = 16384 // n, 2048 // d
q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
do = torch.randn_like(q)


def step():
    if prov.startswith("fa2dist"):
        o = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=prov == "fa2dist-det")
        o.backward(do)
    else:
        with sdpa_kernel({"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[prov]):
            F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(do)


for _ in range(2):
    step()
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
step()
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
