"""The sequence-parallel fused backward's dQ at d64 computed as dQ^T = K^T dS^T, so that its fp32 stores into the
copy engine's buffer fall on all the shared-memory banks (Nsight Compute: dQ = dS K wrote 64-bit pairs at 4 wavefronts
each, twice the least), against the committed kernel: errors against float64, dK/dV bitwise, then forward+backward
CUDA-graph timings interleaved with SDPA flash and cuDNN, medians of the rounds. Run from the repository root on the
commit that made the change, with its parent's fa2dist/ops/kernels/hopper.py beside this script as hopper_base.py."""
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
import hopper_base  # noqa: E402
from bench_attention import _graph_ms  # noqa: E402

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
NEW = att.attn_bwd_dkdv_ws_kernel
KERNELS = {"base": hopper_base.attn_bwd_dkdv_ws_kernel, "dqt64": NEW}
SHAPES = [(64, 1024, False), (64, 2048, False), (64, 4096, False), (64, 16384, False), (64, 4096, True),
          (64, 16384, True)]


def fwdbwd(name, q, k, v, do, causal):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=causal), (q, k, v), do)
        return f

    def f():
        att.attn_bwd_dkdv_ws_kernel = KERNELS[name]
        try:
            out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False)
            return torch.autograd.grad(out, (q, k, v), do)
        finally:
            att.attn_bwd_dkdv_ws_kernel = NEW
    return f


checks = {}
for d, nq, nk, causal in [(64, 1000, 1037, False), (64, 4100, 4100, True), (64, 777, 500, False),
                          (64, 129, 1031, False), (128, 1000, 1037, False)]:
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
        for name in ("dqt64",):
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
        names = ["cudnn", "flash", "base", "dqt64"]
        if r % 2:
            names = names[::-1]
        for name in names:
            ms = _graph_ms(fwdbwd(name, q, k, v, do, causal), 100)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops_fwdbwd": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "dqt64.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f} ({x / med['cudnn']:.3f} cudnn)" for k2, x in med.items()),
          f" dqt64/base {med['dqt64'] / med['base']:.3f}")
