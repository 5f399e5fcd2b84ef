"""The forward with its row maxima and sums taken as trees within each thread (``_tree_rows``: pairs, then halves of
the thread's column groups; the longest dependent chain log2 of the thread's columns, not their count) against the
kernel at 1c20513, which takes them as one chain per row. The variant is loaded from hopper_tree.py beside this
script: fa2dist/ops/kernels/hopper.py at 1c20513 with tree.patch applied. Usage:
python benchmarks/results/h100-2026-11-27-tree/tree_ab.py ROUNDS; writes $OUT/tree.json."""
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
from bench_attention import _graph_ms  # noqa: E402

import fa2dist  # noqa: E402
import fa2dist.ops.attention as att  # noqa: E402


def load(tau, name="hopper_vote"):
    os.environ["FA2_TAU"] = str(tau)
    spec = importlib.util.spec_from_file_location(f"{name}_{tau}", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                                 f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.attn_fwd_ws_kernel


OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BASE = att.attn_fwd_ws_kernel
KERNELS = {"base": BASE, "tree": load(0, "hopper_tree")}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
SHAPES = [(64, 1024, False), (64, 1024, True), (64, 4096, True), (64, 16384, False), (128, 1024, False),
          (128, 4096, False), (128, 16384, False), (128, 16384, True), (256, 4096, False)]


def forward(name, q, k, v, causal):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f

    def f():
        att.attn_fwd_ws_kernel = KERNELS[name]
        try:
            return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", return_lse=True)
        finally:
            att.attn_fwd_ws_kernel = BASE
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
        row["tree_vs_base_o"] = (outs["base"][0].float() - outs["tree"][0].float()).abs().max().item()
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
        names = ["cudnn", "base", "tree", "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(forward(name, q, k, v, causal), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "tree.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          " tree/base %.3f" % (med["tree"] / med["base"]), " base/flash %.3f" % (med["base"] / med["flash"]),
          " tree/flash %.3f" % (med["tree"] / med["flash"]), " tree/cudnn %.3f" % (med["tree"] / med["cudnn"]))
