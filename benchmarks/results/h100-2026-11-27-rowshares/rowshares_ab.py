"""The forward with each thread's share of the row sums (the quad's shuffles once, after the last key tile;
``ws_row_shares``) against the quad's sums every tile, at every head dim. Usage:
python benchmarks/results/h100-2026-11-27-rowshares/rowshares_ab.py ROUNDS; writes $OUT/rowshares.json."""
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

ROW_SHARES = att.ws_row_shares


OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
KERNELS = {"base": False, "lpart": True}  # ROW_SHARES
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
SHAPES = [(64, 1024, False), (64, 1024, True), (64, 4096, True), (64, 16384, False), (128, 1024, False),
          (128, 4096, False), (128, 16384, False), (128, 16384, True), (256, 1024, False), (256, 4096, False),
          (256, 16384, True)]


def forward(name, q, k, v, causal):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f

    def f():
        att.ws_row_shares = lambda head_dim: KERNELS[name]
        try:
            return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", return_lse=True)
        finally:
            att.ws_row_shares = ROW_SHARES
    return f


checks = {}
for d, nq, nk, causal, scale in [(64, 1000, 1037, False, 1), (64, 1037, 1000, True, 1), (64, 4100, 4100, True, 1),
                                 (128, 777, 500, False, 1), (128, 700, 129, True, 1), (128, 2048, 2048, True, 1),
                                 (256, 333, 1031, False, 1), (64, 1, 3000, False, 1), (64, 2000, 2000, False, 4),
                                 (128, 3000, 3000, True, 4)]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(nq + d)
        q = torch.randn(2, 4, nq, d, device="cuda", dtype=dtype) * scale
        k, v = (torch.randn(2, 4, nk, d, device="cuda", dtype=dtype) for _ in range(2))
        mask = torch.ones(nq, nk, dtype=torch.bool, device="cuda").tril(diagonal=nk - nq) if causal else None
        qd, kd, vd = (t.double() for t in (q, k, v))
        scores = qd @ kd.transpose(-1, -2) / d ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        ref_lse = torch.logsumexp(scores, -1)
        seen = torch.isfinite(ref_lse)
        ref = torch.softmax(scores.masked_fill(~seen[..., None], 0.0), -1).masked_fill(~seen[..., None], 0.0) @ vd
        row = {"torch_o": (F.scaled_dot_product_attention(q, k, v, attn_mask=mask).double() - ref)[seen].abs().max()
               .item()}
        outs = {}
        for name in KERNELS:
            outs[name] = o, lse = forward(name, q, k, v, causal)()
            row[f"{name}_o"] = (o.double() - ref)[seen].abs().max().item()
            row[f"{name}_lse"] = (lse.double() - ref_lse)[seen].abs().max().item()
        row["lpart_vs_base_o"] = (outs["base"][0].float() - outs["lpart"][0].float()).abs().max().item()
        checks[f"d{d} nq{nq} nk{nk} {'causal' if causal else 'full'} x{scale} {str(dtype)[6:]}"] = row
        print("check", d, nq, nk, causal, scale, dtype, row, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 10:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for d, n, causal in SHAPES:
        b, h = 16384 // n, 2048 // d
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * d * (0.5 if causal else 1)
        key = f"d{d} n{n} {'causal' if causal else 'full'}"
        names = ["cudnn", "base", "lpart", "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(forward(name, q, k, v, causal), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "rowshares.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          " lpart/base %.3f" % (med["lpart"] / med["base"]), " base/flash %.3f" % (med["base"] / med["flash"]),
          " lpart/flash %.3f" % (med["lpart"] / med["flash"]))
