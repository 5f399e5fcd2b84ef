"""The d128 forward from 2k keys with three computing warpgroups (192 query rows) on 64-key tiles, in 3 to 5 stages,
against the registered 128x128 tiles in 3 stages (``hopper.WS_TILES``). Checks against float64 first, then
CUDA-graph timings with every provider interleaved in each round. Usage:
python benchmarks/results/h100-2026-11-27-tiles192/tiles_ab.py ROUNDS; writes $OUT/tiles192.json."""
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
KERNELS = {"128x128s3": (128, 128, 3, 1), "192x64s3": (192, 64, 3, 1), "192x64s4": (192, 64, 4, 1),
           "192x64s5": (192, 64, 5, 1)}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def run(name, q, k, v, causal):
    if name in BACKENDS:
        with sdpa_kernel(BACKENDS[name]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    hopper.WS_TILES = tuple(row for row in BASE if row[0] != 128) + ((128, None, 0, KERNELS[name]),)
    try:
        return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
    finally:
        hopper.WS_TILES = BASE


checks = {}
for b, h, nq, nk, causal in [(2, 3, 4100, 4100, False), (1, 4, 2500, 3000, True), (1, 2, 300, 9000, False),
                             (1, 2, 5000, 2200, True)]:
    torch.manual_seed(nq)
    q = torch.randn(b, h, nq, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(b, h, nk, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    qd, kd, vd = (t.double() for t in (q, k, v))
    mask = torch.ones(nq, nk, dtype=torch.bool, device="cuda").tril(nk - nq) if causal else None
    s = qd @ kd.transpose(-1, -2) / 128 ** 0.5
    if causal:
        s = s.masked_fill(~mask, float("-inf"))
    seen = torch.isfinite(s.amax(-1))
    ref = torch.softmax(s.masked_fill(~seen[..., None], 0), -1).masked_fill(~seen[..., None], 0) @ vd
    row = {"torch": (F.scaled_dot_product_attention(q, k, v, attn_mask=mask).double() - ref)[seen].abs().max().item()}
    for name in KERNELS:
        row[name] = (run(name, q, k, v, causal).double() - ref)[seen].abs().max().item()
    checks[f"b{b} h{h} nq{nq} nk{nk} {'causal' if causal else 'full'}"] = row
    print("check", b, h, nq, nk, causal, row, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 10:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for n, causal in [(4096, False), (8192, False), (16384, False), (4096, True), (16384, True)]:
        b, h = 16384 // n, 16
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * 128 * (0.5 if causal else 1)
        key = f"d128 n{n} {'causal' if causal else 'full'}"
        names = ["cudnn", *KERNELS, "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(functools.partial(run, name, q, k, v, causal), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "tiles192.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()))
    for name in KERNELS:
        ratios = sorted(a / b for a, b in zip(vals[name], vals["128x128s3"]))
        print(f"    {name} / 128x128s3 {ratios[len(ratios) // 2]:.3f}  rounds {' '.join(f'{x:.3f}' for x in ratios)}")
