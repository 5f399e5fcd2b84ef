"""d64 4k causal, one of the two forward cells at the 1.5x-SDPA-flash bar: its 256x64 tiles (4 stages, one tile a
program) against the counter-drawn persistent grid (``ws_dynamic``) and 6 stages. CUDA-graph timings interleaved
with SDPA flash, medians of the rounds."""
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

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
ORIG = att.ws_tiles, att.ws_dynamic
VARIANTS = {"dynamic": (None, True), "s6": ((256, 64, 6, 1), None), "dynamic_s6": ((256, 64, 6, 1), True)}


def fwd_fn(name, q, k, v, causal):
    if name == "flash":
        def f():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f

    def f():
        if name in VARIANTS:
            tiles, dynamic = VARIANTS[name]
            if tiles:
                att.ws_tiles = lambda *a: tiles
            if dynamic:
                att.ws_dynamic = lambda *a: dynamic
        try:
            return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
        finally:
            att.ws_tiles, att.ws_dynamic = ORIG
    return f


torch.manual_seed(0)
q, k, v = (torch.randn(2, 4, 4100, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
base = fwd_fn("current", q, k, v, True)()
checks = {n: torch.equal(fwd_fn(n, q, k, v, True)(), base) for n in VARIANTS}
print("bitwise equal to the current grid:", checks, flush=True)
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 15:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for d, n, causal in [(64, 4096, True)]:
        b, h = 16384 // n, 2048 // d
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * d * (0.5 if causal else 1)
        key = f"d{d} n{n} {'causal' if causal else 'full'}"
        names = ["flash", "current", *VARIANTS]
        if r % 2:
            names = names[::-1]
        for name in names:
            ms = _graph_ms(fwd_fn(name, q, k, v, causal), 200)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
json.dump({"tflops": res, "bitwise": checks, "device": torch.cuda.get_device_name()},
          open(os.path.join(OUT, "grid4k.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f} ({x / med['flash']:.3f})" for k2, x in med.items()))
