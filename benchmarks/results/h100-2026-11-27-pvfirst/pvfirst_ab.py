"""The d64 two-programs-per-SM forward (128x64 tiles, below 1.5k keys causal) issuing one wgmma product at a time
(``ws_launch_options``' OVERLAP_PV=False: tile i-1's P V completes, then tile i's q.k) against the kernel before it,
whose overlapped form ptxas serialised (C7512: every wgmma instruction waited for). The kernel before is loaded from
a copy of its hopper.py (argument 1). Bitwise checks and float64 errors, then CUDA-graph timings (forward, and
forward+backward in the sequence-parallel mode) interleaved with SDPA flash and cuDNN, medians of the rounds."""
import importlib.util
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import fa2dist  # noqa: E402
import fa2dist.ops.attention as att  # noqa: E402
from bench_attention import _graph_ms  # noqa: E402

spec = importlib.util.spec_from_file_location("hopper_before", sys.argv[1])
before = importlib.util.module_from_spec(spec)
spec.loader.exec_module(before)
OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
NEW = att.attn_fwd_ws_kernel
KERNELS = {"before": before.attn_fwd_ws_kernel, "new": NEW}
LAUNCH_OPTIONS = att.ws_launch_options
SHAPES = [(64, 512, True), (64, 1024, True)]


def fwd_fn(name, q, k, v, causal):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f

    def f():
        att.attn_fwd_ws_kernel = KERNELS[name]
        if name == "before":  # its launch options, without OVERLAP_PV
            att.ws_launch_options = before.ws_launch_options
        try:
            return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
        finally:
            att.attn_fwd_ws_kernel = NEW
            att.ws_launch_options = LAUNCH_OPTIONS
    return f


checks = {}
for d, nq, nk in [(64, 1000, 1037), (64, 100, 137), (64, 1100, 1100), (64, 300, 64), (64, 1024, 1024),
                  (64, 1037, 1000), (64, 1, 1031)]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(nq + nk)
        q = torch.randn(3, 4, nq, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(3, 2, nk, d, device="cuda", dtype=dtype).repeat_interleave(2, 1) for _ in range(2))
        mask = torch.ones(nq, nk, dtype=torch.bool, device="cuda").tril(diagonal=nk - nq)  # bottom-right aligned
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
        seen = mask.any(1)[None, None, :, None]  # rows that see no key: fa2dist writes 0, PyTorch NaN
        ref = torch.where(seen, ref, 0)
        torch_out = torch.where(seen, F.scaled_dot_product_attention(q, k, v, attn_mask=mask).double(), 0)
        base = fwd_fn("before", q, k, v, True)()
        outs = [fwd_fn("new", q, k, v, True)() for _ in range(3)]
        row = {"torch_err": round((torch_out - ref).abs().max().item(), 6),
               "before_err": round((base.double() - ref).abs().max().item(), 6),
               "new_err": round((outs[0].double() - ref).abs().max().item(), 6),
               "bitwise_vs_before": all(torch.equal(o, base) for o in outs)}
        checks[f"d{d} nq{nq} nk{nk} causal {str(dtype)[6:]}"] = row
        print("check", d, nq, nk, dtype, row, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 15:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for d, n, causal in SHAPES:
        b, h = 16384 // n, 2048 // d
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)
        for mode in ("fwd", "fwdbwd"):
            flops = 4 * b * h * n * n * d * (0.5 if causal else 1) * (3.5 if mode == "fwdbwd" else 1)
            key = f"d{d} n{n} {'causal' if causal else 'full'} {mode}"
            names = ["cudnn", "flash", "before", "new"]
            if r % 2:
                names = names[::-1]
            for name in names:
                f = fwd_fn(name, q, k, v, causal)
                step = f if mode == "fwd" else (lambda f=f: torch.autograd.grad(f(), (q, k, v), do))
                ms = _graph_ms(step, 200)
                res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
            print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "pvfirst.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:26s}", "  ".join(f"{k2} {x:6.1f} ({x / med['flash']:.3f})" for k2, x in med.items()),
          f" new/before {med['new'] / med['before']:.3f}")
