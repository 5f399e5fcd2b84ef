"""The d64 forward without a mask from 2k keys (192x128 tiles, one tile a program) against the same tiles on the
counter-drawn persistent grid (``hopper.WS_DYNAMIC``), which it ran below 2k keys only (``--causal --head-dim 128
--one-tile-up-to 2048``: the d128 causal forward, drawn up to 2k keys). Bitwise checks first, then CUDA-graph timings
with every provider interleaved in each round. Usage:
python benchmarks/results/h100-2026-11-27-dyn64/dyn64_ab.py ROUNDS [NAME] [options]; writes $OUT/NAME (dyn64.json)."""
import argparse
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
from fa2dist.ops.kernels import hopper  # noqa: E402

OUT = os.environ.get("OUT", ".")
parser = argparse.ArgumentParser()
parser.add_argument("rounds", type=int, nargs="?", default=5)
parser.add_argument("name", nargs="?", default="dyn64.json")
parser.add_argument("--head-dim", type=int, default=64)
parser.add_argument("--causal", action="store_true")
parser.add_argument("--one-tile-up-to", type=int, default=2047, help="the longest keys the one-tile side draws")
parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 3072, 4096, 8192, 16384])
args = parser.parse_args()
ROUNDS, NAME, D, CAUSAL = args.rounds, args.name, args.head_dim, args.causal
BASE = hopper.WS_DYNAMIC
OTHERS = tuple(row for row in BASE if row[:2] != (D, CAUSAL))
KERNELS = {"one_tile": OTHERS + ((D, CAUSAL, args.one_tile_up_to),), "drawn": OTHERS + ((D, CAUSAL, 1 << 31),)}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def run(name, q, k, v):
    if name in BACKENDS:
        with sdpa_kernel(BACKENDS[name]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=CAUSAL)
    hopper.WS_DYNAMIC = KERNELS[name]
    try:
        return fa2dist.flash_attention(q, k, v, causal=CAUSAL, layout="bhsd", return_lse=True)
    finally:
        hopper.WS_DYNAMIC = BASE


checks = {}
for b, h, hk, nq, nk in [(2, 4, 2, 2100, 2100), (1, 3, 3, 5000, 4100), (1, 2, 1, 300, 9000), (3, 5, 5, 2048, 2048)]:
    torch.manual_seed(nq)
    q = torch.randn(b, h, nq, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(b, hk, nk, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    (o1, l1), (o2, l2) = run("one_tile", q, k, v), run("drawn", q, k, v)
    checks[f"b{b} h{h}/{hk} nq{nq} nk{nk}"] = equal = torch.equal(o1, o2) and torch.equal(l1, l2)
    print("check", b, h, hk, nq, nk, "bitwise equal:", equal, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 10:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for n in args.lengths:
        b, h = round(16384 / n), 2048 // D
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * D * (0.5 if CAUSAL else 1)
        key = f"d{D} n{n} b{b} {'causal' if CAUSAL else 'full'}"
        names = ["cudnn", *KERNELS, "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(functools.partial(run, name, q, k, v), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(), "torch": torch.__version__},
              open(os.path.join(OUT, NAME), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    ratios = sorted(a / b for a, b in zip(vals["drawn"], vals["one_tile"]))
    print(f"{key:20s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          f"  drawn/one_tile {ratios[len(ratios) // 2]:.3f} (rounds {' '.join(f'{x:.3f}' for x in ratios)})")
