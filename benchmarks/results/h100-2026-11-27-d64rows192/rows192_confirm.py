"""A second run for the d64 forward without a mask below 2k keys: 192x128 tiles in 3 stages against the registered
256x64 tiles in 6 stages, on the kernel as committed (no skipping of warpgroups past the sequence), at lengths around
where the first run (rows192_ab.py) saw them cross. Usage:
python benchmarks/results/h100-2026-11-27-d64rows192/rows192_confirm.py ROUNDS; writes $OUT/rows192_confirm.json."""
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
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BASE = hopper.WS_TILES
KERNELS = {"256x64s6": (256, 64, 6, 1), "192x128s3": (192, 128, 3, 1)}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def run(name, q, k, v):
    if name in BACKENDS:
        with sdpa_kernel(BACKENDS[name]):
            return F.scaled_dot_product_attention(q, k, v)
    hopper.WS_TILES = tuple(row for row in BASE if row[:3] != (64, False, 0)) + ((64, False, 0, KERNELS[name]),)
    try:
        return fa2dist.flash_attention(q, k, v, layout="bhsd")
    finally:
        hopper.WS_TILES = BASE


x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 10:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for n in (1024, 1280, 1408, 1536, 1792, 2000):
        b, h = round(16384 / n), 32
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * 64
        key = f"d64 n{n} b{b} full"
        names = ["cudnn", *KERNELS, "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(functools.partial(run, name, q, k, v), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "device": torch.cuda.get_device_name(), "torch": torch.__version__},
              open(os.path.join(OUT, "rows192_confirm.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    ratios = sorted(a / b for a, b in zip(vals["192x128s3"], vals["256x64s6"]))
    flash = {k2: sorted(a / b for a, b in zip(vals[k2], vals["flash"])) for k2 in KERNELS}
    print(f"{key:20s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          f"  192/256 {ratios[len(ratios) // 2]:.3f} (rounds {' '.join(f'{x:.3f}' for x in ratios)})",
          "  / flash", " ".join(f"{k2} {v2[len(v2) // 2]:.3f}" for k2, v2 in flash.items()))
