"""The fused d128 backward's fp32 dQ staging buffer with a 32-byte swizzle (``swz32``) against the default 128-byte
swizzle (``base``). The buffer is written from the wgmma accumulator layout (each thread a pair of one row); with the
128-byte swizzle each half-warp's pairs fall on half of the banks (two wavefronts where one would do), with the
32-byte one on all of them. The copy engine then adds the tile in 16 boxes of 8 columns instead of 4 of 32. Only
the host-side layout of the dQ descriptor changes. Errors against float64, then sequence-parallel forward+backward
CUDA-graph timings interleaved with cuDNN, medians of the rounds."""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.experimental.gluon import language as gl

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_attention import _graph_ms  # noqa: E402

import fa2dist  # noqa: E402
import fa2dist.ops.attention as att  # noqa: E402

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BASE = att._ws_layout


def swz32(rows, cols, dtype):
    if dtype == torch.float32 and cols == 128:
        return gl.NVMMASharedLayout(swizzle_byte_width=32, element_bitwidth=32, rank=4)
    return BASE(rows, cols, dtype)


LAYOUTS = {"base": BASE, "swz32": swz32}
SHAPES = [(n, c) for n in (1024, 4096, 16384) for c in (False, True) if n >= 4096 or not c]


def fwdbwd(name, q, k, v, do, causal):
    if name == "cudnn":
        def f():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=causal), (q, k, v), do)
        return f

    def f():
        att._ws_layout = LAYOUTS[name]
        try:
            out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False)
            return torch.autograd.grad(out, (q, k, v), do)
        finally:
            att._ws_layout = BASE
    return f


checks = {}
for nq, nk, causal in [(1000, 1037, False), (4100, 4100, True), (777, 500, False), (3001, 3500, True),
                       (2048, 2048, False)]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(nq + nk)
        q = torch.randn(2, 4, nq, 128, device="cuda", dtype=dtype, requires_grad=True)
        k, v = (torch.randn(2, 2, nk, 128, device="cuda", dtype=dtype).repeat_interleave(2, 1).requires_grad_()
                for _ in range(2))
        do = torch.randn_like(q)
        mask = torch.ones(nq, nk, dtype=torch.bool, device="cuda").tril(diagonal=nk - nq) if causal else None
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref = torch.autograd.grad(F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask), (qd, kd, vd),
                                  do.double())
        tg = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v), do)
        row = {"torch": [round((a.double() - r).abs().max().item(), 6) for a, r in zip(tg, ref)]}
        for name in LAYOUTS:
            g = fwdbwd(name, q, k, v, do, causal)()
            row[name] = [round((a.double() - r).abs().max().item(), 6) for a, r in zip(g, ref)]
        checks[f"nq{nq} nk{nk} {'causal' if causal else 'full'} {str(dtype)[6:]}"] = row
        print("check", nq, nk, causal, dtype, row, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 10:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for n, causal in SHAPES:
        b, h = 16384 // n, 16
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)
        flops = 4 * b * h * n * n * 128 * (0.5 if causal else 1) * 3.5
        key = f"d128 n{n} {'causal' if causal else 'full'}"
        names = ["cudnn", "base", "swz32"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(fwdbwd(name, q, k, v, do, causal), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "dqswizzle.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          " swz32/base %.3f" % (med["swz32"] / med["base"]), " swz32/cudnn %.3f" % (med["swz32"] / med["cudnn"]))
