"""The fused d128 backward storing each dQ tile with its rows permuted within groups of 8 (``perm``: row 8a + 4b + c
into row 8a + 2c + b of the 128-byte-swizzled fp32 buffer, so each half-warp's pairs cover all the banks) against
the same kernel storing rows in order (``base``: two wavefronts a half-warp where one would do). The copy engine adds
the same 4 boxes of 32 columns either way; the conversion to bf16 puts the rows back. Errors against float64, then
sequence-parallel forward+backward CUDA-graph timings interleaved with cuDNN, medians of the rounds."""
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
from bench_attention import _graph_ms  # noqa: E402

import fa2dist  # noqa: E402
import fa2dist.ops.attention as att  # noqa: E402

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
PERMUTED = att.ws_dq_permuted
LAYOUTS = {"base": lambda head_dim: False, "perm": PERMUTED}
SHAPES = [(n, c) for n in (1024, 4096, 16384) for c in (False, True) if n >= 4096 or not c]


def fwdbwd(name, q, k, v, do, causal):
    if name == "cudnn":
        def f():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=causal), (q, k, v), do)
        return f

    def f():
        att.ws_dq_permuted = LAYOUTS[name]
        try:
            out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False)
            return torch.autograd.grad(out, (q, k, v), do)
        finally:
            att.ws_dq_permuted = PERMUTED
    return f


checks = {}
for nq, nk, causal in [(1000, 1037, False), (4100, 4100, True), (777, 500, False), (3001, 3500, True),
                       (2048, 2048, False), (1, 1031, False), (13, 4000, True)]:
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
        grads = {}
        for name in LAYOUTS:
            grads[name] = g = fwdbwd(name, q, k, v, do, causal)()
            row[name] = [round((a.double() - r).abs().max().item(), 6) for a, r in zip(g, ref)]
        row["dk_dv_bitwise_equal"] = all(torch.equal(a, b) for a, b in zip(grads["base"][1:], grads["perm"][1:]))
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
        names = ["cudnn", "base", "perm"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(fwdbwd(name, q, k, v, do, causal), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "dqperm.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          " perm/base %.3f" % (med["perm"] / med["base"]), " perm/cudnn %.3f" % (med["perm"] / med["cudnn"]))
