"""The sequence-parallel fused backward at d128 with its fp32 dQ buffer (and the descriptor dQ is added through) in a
32-byte swizzle, whose 8-column chunks take each half-warp's 64-bit stores on all 32 banks (under the default
128-byte swizzle, 4 wavefronts a store, twice the least), against the default layout: errors against float64, dK/dV
bitwise, then forward+backward CUDA-graph timings interleaved with SDPA flash and cuDNN, medians of the rounds. Run
from the repository root with dq_swizzle32.patch applied (against 2b4b0d3)."""
import json, os, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fa2dist  # noqa: E402
import fa2dist.ops.attention as att  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from bench_attention import _graph_ms  # noqa: E402

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
NEW = att.ws_dq_buffer_layout
LAYOUTS = {"base": lambda d, m: gl.NVMMASharedLayout.get_default_for([1, 1, m, d], gl.float32), "sw32": NEW}
SHAPES = [(128, 1024, False), (128, 2048, False), (128, 4096, False), (128, 16384, False), (128, 4096, True),
          (128, 16384, True)]


def fwdbwd(name, q, k, v, do, causal):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=causal), (q, k, v), do)
        return f

    def f():
        att.ws_dq_buffer_layout = LAYOUTS[name]
        try:
            out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False)
            return torch.autograd.grad(out, (q, k, v), do)
        finally:
            att.ws_dq_buffer_layout = NEW
    return f


checks = {}
for d, nq, nk, causal in [(128, 1000, 1037, False), (128, 3100, 3100, True), (128, 777, 500, False),
                          (128, 129, 1031, False), (128, 2048, 2048, False)]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(nq + d)
        q = torch.randn(2, 4, nq, d, device="cuda", dtype=dtype, requires_grad=True)
        k, v = (torch.randn(2, 2, nk, d, device="cuda", dtype=dtype).repeat_interleave(2, 1).requires_grad_()
                for _ in range(2))
        do = torch.randn_like(q)
        mask = torch.ones(nq, nk, dtype=torch.bool, device="cuda").tril(diagonal=nk - nq) if causal else None
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref = torch.autograd.grad(F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask), (qd, kd, vd), do.double())
        with torch.no_grad():
            pass
        tg = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v), do)
        row = {"torch_err": [round((a.double() - r).abs().max().item(), 5) for a, r in zip(tg, ref)]}
        base = fwdbwd("base", q, k, v, do, causal)()
        row["base_err"] = [round((a.double() - r).abs().max().item(), 5) for a, r in zip(base, ref)]
        for name in ("sw32",):
            g = fwdbwd(name, q, k, v, do, causal)()
            row[name + "_err"] = [round((a.double() - r).abs().max().item(), 5) for a, r in zip(g, ref)]
            row[name + "_dkdv_bitwise"] = bool(torch.equal(g[1], base[1]) and torch.equal(g[2], base[2]))
        checks[f"d{d} nq{nq} nk{nk} {'causal' if causal else 'full'} {str(dtype)[6:]}"] = row
        print("check", d, nq, nk, causal, dtype, row, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < float(os.environ.get("WARM", "15")):
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for d, n, causal in SHAPES:
        b, h = 16384 // n, 2048 // d
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        flops = 3.5 * 4 * b * h * n * n * d * (0.5 if causal else 1)
        key = f"d{d} n{n} {'causal' if causal else 'full'}"
        names = ["cudnn", "flash", "base", "sw32"]
        if r % 2:
            names = names[::-1]
        for name in names:
            ms = _graph_ms(fwdbwd(name, q, k, v, do, causal), 100)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops_fwdbwd": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "dq_swizzle32.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f} ({x / med['cudnn']:.3f} cudnn)" for k2, x in med.items()),
          f" sw32/base {med['sw32'] / med['base']:.3f}")
