"""The dK/dV kernel's dP^T product started from zero, with -delta added after (``dpinit``: a hopper.py variant, path
in argument 1), against the committed kernel, whose dP^T accumulator starts from -delta in the deterministic mode
and in the causal sequence-parallel mode. There, ptxas waits for the q.k product to finish before it issues dP^T
(C7517, "warpgroup.wait is injected"). Errors against float64, then forward+backward CUDA-graph timings in both
modes, interleaved with cuDNN, medians of the rounds."""
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

spec = importlib.util.spec_from_file_location("hopper_variant", sys.argv[1])
variant = importlib.util.module_from_spec(spec)
spec.loader.exec_module(variant)
OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
BASE = att.attn_bwd_dkdv_ws_kernel
KERNELS = {"base": BASE, "dpinit": variant.attn_bwd_dkdv_ws_kernel}
SHAPES = [(d, n, c) for d in (64, 128) for n in (1024, 4096, 16384) for c in (False, True)]


def fwdbwd(name, q, k, v, do, causal, det):
    if name == "cudnn":
        def f():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=causal), (q, k, v), do)
        return f

    def f():
        att.attn_bwd_dkdv_ws_kernel = KERNELS[name]
        try:
            out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det)
            return torch.autograd.grad(out, (q, k, v), do)
        finally:
            att.attn_bwd_dkdv_ws_kernel = BASE
    return f


checks = {}
for d, nq, nk, causal in [(64, 1000, 1037, False), (64, 1000, 1037, True), (128, 4100, 4100, True),
                          (128, 777, 500, False), (128, 129, 1031, True), (64, 2000, 2000, True)]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(nq + d)
        q = torch.randn(2, 4, nq, d, device="cuda", dtype=dtype, requires_grad=True)
        k, v = (torch.randn(2, 2, nk, d, device="cuda", dtype=dtype).repeat_interleave(2, 1).requires_grad_()
                for _ in range(2))
        do = torch.randn_like(q)
        mask = torch.ones(nq, nk, dtype=torch.bool, device="cuda").tril(diagonal=nk - nq) if causal else None
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref = torch.autograd.grad(F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask), (qd, kd, vd),
                                  do.double())
        tg = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v), do)
        row = {"torch": [round((a.double() - r).abs().max().item(), 6) for a, r in zip(tg, ref)]}
        for det in (True, False):
            for name in KERNELS:
                g = fwdbwd(name, q, k, v, do, causal, det)()
                row[f"{name}_{'det' if det else 'sp'}"] = [round((a.double() - r).abs().max().item(), 6)
                                                            for a, r in zip(g, ref)]
            if det:
                again = fwdbwd("dpinit", q, k, v, do, causal, det)()
                row["dpinit_det_bitwise_rerun"] = all(torch.equal(a, b) for a, b in zip(g, again))
        checks[f"d{d} nq{nq} nk{nk} {'causal' if causal else 'full'} {str(dtype)[6:]}"] = row
        print("check", d, nq, nk, causal, dtype, row, flush=True)

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
        flops = 4 * b * h * n * n * d * (0.5 if causal else 1) * 3.5
        key = f"d{d} n{n} {'causal' if causal else 'full'}"
        names = [("cudnn", False), ("base", True), ("dpinit", True)] + ([("base", False), ("dpinit", False)]
                                                                       if causal else [])
        if r % 2:
            names = names[::-1]
        for name, det in names:
            ms = _graph_ms(fwdbwd(name, q, k, v, do, causal, det), 150)
            label = name if name == "cudnn" else f"{name}_{'det' if det else 'sp'}"
            res.setdefault(key, {}).setdefault(label, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "dpinit.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          " det %.3f" % (med["dpinit_det"] / med["base_det"]),
          (" sp %.3f" % (med["dpinit_sp"] / med["base_sp"])) if "base_sp" in med else "")
