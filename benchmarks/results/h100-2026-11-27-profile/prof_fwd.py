"""One forward for Nsight Compute: python prof_fwd.py PROVIDER HEAD_DIM SEQLEN CAUSAL (fa2dist, cudnn or flash; bf16,
16k tokens, hidden 2048). Three calls: prof.sh profiles the third."""
import os, sys
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.getcwd())
import fa2dist
prov, d, n, causal = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
b, h = 16384 // n, 2048 // d
q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
for _ in range(3):
    if prov == "fa2dist":
        fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
    else:
        with sdpa_kernel({"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[prov]):
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)
torch.cuda.synchronize()
