"""The forward with its last query tiles split along their keys (``hopper.ws_split_tail``, merged by
``attn_fwd_merge_kernel``) against whole tiles only. Checks against float64 (bf16 and fp16, awkward shapes, grouped
heads, both layouts, bitwise repeats), then CUDA-graph timings with every provider interleaved in each round.
Usage: python benchmarks/results/h100-2026-11-27-split/split_ab.py ROUNDS; writes $OUT/split.json."""
import functools
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
from fa2dist.ops.kernels import hopper  # noqa: E402

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
KERNELS = {"base": 0.0, "split": 1.0}  # WS_SPLIT_SHARE
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
SMS = torch.cuda.get_device_properties(0).multi_processor_count
merges = []
_merge = att.attn_fwd_merge_kernel


class _Counting:
    def __getitem__(self, grid):
        merges.append(grid)
        return _merge[grid]


att.attn_fwd_merge_kernel = _Counting()


def run(name, q, k, v, causal, layout="bhsd"):
    if name in BACKENDS:
        with sdpa_kernel(BACKENDS[name]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal), None
    share = hopper.WS_SPLIT_SHARE
    hopper.WS_SPLIT_SHARE = KERNELS[name]
    try:
        return fa2dist.flash_attention(q, k, v, causal=causal, layout=layout, return_lse=True)
    finally:
        hopper.WS_SPLIT_SHARE = share


checks = {}
CHECKS = [  # (batch, heads, kv heads, nq, nk, d, layout): each splits on 132 SMs
    (2, 9, 9, 1000, 1037, 128, "bhsd"),  # 144 tiles: 12 split over 9 key tiles each, fewer key tiles than programs
    (1, 17, 17, 4100, 3000, 128, "bshd"),
    (4, 16, 4, 4096, 4096, 128, "bhsd"),  # grouped-query heads; 68 tiles split
    (2, 70, 70, 300, 9000, 128, "bshd"),  # 71 key tiles a tile
    (4, 40, 40, 1000, 100, 128, "bhsd"),  # one key tile a tile: no tile split, some shares empty
    (5, 7, 7, 1000, 777, 64, "bhsd"),  # d64 256-row tiles drawn from a counter
    (2, 40, 8, 1100, 1500, 64, "bshd"),
    (16, 32, 32, 1024, 1024, 64, "bhsd"),
    (3, 70, 70, 600, 2000, 128, "bhsd"),
]
for b, h, hk, nq, nk, d, layout in CHECKS:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(nq + d + h)
        q = torch.randn(b, nq, h, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(b, nk, hk, d, device="cuda", dtype=dtype) for _ in range(2))
        if layout == "bhsd":
            q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        tr = functools.partial(torch.transpose, dim0=1, dim1=2) if layout == "bshd" else torch.clone
        qd, kd, vd = (tr(t).double() for t in (q, k, v))
        kd, vd = (t.repeat_interleave(h // hk, 1) for t in (kd, vd))
        scores = qd @ kd.transpose(-1, -2) / d ** 0.5
        ref_lse = torch.logsumexp(scores, -1)
        ref = torch.softmax(scores, -1) @ vd
        del scores
        qt, kt, vt = (tr(t) for t in (q, k, v))
        row = {"torch_o": (F.scaled_dot_product_attention(qt, kt.repeat_interleave(h // hk, 1),
                                                          vt.repeat_interleave(h // hk, 1)).double() - ref)
               .abs().max().item()}
        n_merges = len(merges)
        for name in KERNELS:
            o, lse = run(name, q, k, v, False, layout)
            row[f"{name}_o"] = (tr(o).double() - ref).abs().max().item()
            row[f"{name}_lse"] = (lse.double() - ref_lse).abs().max().item()
            if name == "split":
                row["merges"] = len(merges) - n_merges
                row["repeat_equal"] = all(torch.equal(o, o2) and torch.equal(lse, l2) for o2, l2 in
                                          (run(name, q, k, v, False, layout) for _ in range(3)))
        row["split_le_2x_torch"] = row["split_o"] <= 2 * row["torch_o"]
        checks[f"b{b} h{h}/{hk} nq{nq} nk{nk} d{d} {layout} {str(dtype)[6:]}"] = row
        print("check", b, h, hk, nq, nk, d, layout, dtype, row, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 10:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
SHAPES = [(64, 512, 16384 // 512, 32), (64, 1024, 16, 32), (64, 1536, 10, 32), (128, 1024, 16, 16),
          (128, 2048, 8, 16), (128, 4096, 4, 16), (128, 8192, 2, 16), (128, 16384, 1, 16),
          (128, 4096, 1, 67), (128, 4096, 1, 68), (128, 4096, 1, 69)]  # last 3: a last round 0.24, 0.48, 0.73 full
res = {}
for r in range(ROUNDS):
    for d, n, b, h in SHAPES:
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * d
        key = f"d{d} n{n} b{b} h{h}"
        names = ["cudnn", "base", "split", "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(functools.partial(run, name, q, k, v, False), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(), "sms": SMS,
               "torch": torch.__version__}, open(os.path.join(OUT, "split.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:22s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          " split/base %.3f" % (med["split"] / med["base"]), " split/flash %.3f" % (med["split"] / med["flash"]),
          " split/cudnn %.3f" % (med["split"] / med["cudnn"]))
