"""The d64 forward without a mask below 2k keys (counter-drawn persistent grid) on 192x128 tiles in 3 to 5 stages,
against the registered 256x64 tiles in 6 stages (``hopper.WS_TILES``). Warpgroups whose rows lie wholly past the
sequence skip their tile (``attention.WS_SKIP_PAST``: 1024 rows are five 192-row tiles and a sixth with one warpgroup
of rows). Checks against float64 and bitwise checks of the skip first, then CUDA-graph timings with every provider
interleaved in each round. Usage: python benchmarks/results/h100-2026-11-27-d64rows192/rows192_ab.py ROUNDS; writes
$OUT/rows192.json."""
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
BASE = hopper.WS_TILES
KERNELS = {"256x64s6": ((256, 64, 6, 1), True), "192x128s3": ((192, 128, 3, 1), True),
           "192x128s3-noskip": ((192, 128, 3, 1), False), "192x128s4": ((192, 128, 4, 1), True),
           "192x128s5": ((192, 128, 5, 1), True)}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def run(name, q, k, v, causal=False, skip=None):
    if name in BACKENDS:
        with sdpa_kernel(BACKENDS[name]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if name == "registered":
        att.WS_SKIP_PAST = skip
        return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", return_lse=True)
    tiles, att.WS_SKIP_PAST = KERNELS[name]
    hopper.WS_TILES = tuple(row for row in BASE if row[:3] != (64, False, 0)) + ((64, False, 0, tiles),)
    try:
        return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", return_lse=True)
    finally:
        hopper.WS_TILES = BASE


checks = {}
for b, h, nq, nk, causal in [(2, 5, 1000, 1037, False), (3, 4, 1100, 700, False), (1, 6, 777, 1500, False),
                             (2, 4, 1024, 1024, False), (2, 3, 1100, 700, True), (1, 4, 2050, 2050, True),
                             (2, 3, 1000, 1900, True), (2, 3, 1050, 1200, True),
                             (1, 2, 9000, 8192, True)]:
    torch.manual_seed(nq + nk)
    q = torch.randn(b, h, nq, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(b, h, nk, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    key = f"b{b} h{h} nq{nq} nk{nk} {'causal' if causal else 'full'}"
    # The skip on the registered tiles: bitwise what they computed before.
    (o1, l1), (o2, l2) = run("registered", q, k, v, causal, True), run("registered", q, k, v, causal, False)
    row = {"skip_bitwise_equal": torch.equal(o1, o2) and torch.equal(l1, l2)}
    if not causal:
        qd, kd, vd = (t.double() for t in (q, k, v))
        s = qd @ kd.transpose(-1, -2) / 8
        ref, ref_lse = torch.softmax(s, -1) @ vd, torch.logsumexp(s, -1)
        row["torch"] = (F.scaled_dot_product_attention(q, k, v).double() - ref).abs().max().item()
        for name in KERNELS:
            o, lse = run(name, q, k, v)
            row[name] = (o.double() - ref).abs().max().item()
            row[name + "_lse"] = (lse.double() - ref_lse).abs().max().item()
    checks[key] = row
    print("check", key, row, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 10:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for n in (512, 1024, 1536):
        b, h = 16384 // n, 32
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * 64
        key = f"d64 n{n} full"
        names = ["cudnn", *KERNELS, "flash"]
        for name in names[::-1] if r % 2 else names:
            ms = _graph_ms(functools.partial(run, name, q, k, v), 150)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "rows192.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:14s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()))
    for name in KERNELS:
        ratios = sorted(a / b for a, b in zip(vals[name], vals["256x64s6"]))
        flash = sorted(a / b for a, b in zip(vals[name], vals["flash"]))
        print(f"    {name} / 256x64s6 {ratios[len(ratios) // 2]:.3f}  rounds {' '.join(f'{x:.3f}' for x in ratios)}"
              f"   / flash {flash[len(flash) // 2]:.3f}")
