"""Confirmation: the committed WS_DYNAMIC table against the same code with no dynamic grids (d128 without a mask
then takes the fixed persistent grid), at the lengths the table covers and just past it."""
import json, os, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import fa2dist  # noqa: E402
from fa2dist.ops.kernels import hopper  # noqa: E402
from bench_attention import _graph_ms  # noqa: E402

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
TABLE = hopper.WS_DYNAMIC
SHAPES = [(64, 1024, True), (64, 1024, False), (64, 1536, True), (64, 1536, False), (128, 1024, True),
          (128, 1024, False), (128, 2048, True), (128, 2048, False), (128, 512, True), (64, 512, False)]
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def run(q, k, v, causal, table):
    hopper.WS_DYNAMIC = table
    try:
        return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
    finally:
        hopper.WS_DYNAMIC = TABLE


x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 15:
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for d, n, causal in SHAPES:
        b, h = 16384 // n, 2048 // d
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * d * (0.5 if causal else 1)
        key = f"d{d} n{n} {'causal' if causal else 'full'}"
        names = ["cudnn", "flash", "dynamic", "before"]
        for name in names if r % 2 == 0 else names[::-1]:
            if name in BACKENDS:
                def f():
                    with sdpa_kernel(BACKENDS[name]):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            else:
                table = TABLE if name == "dynamic" else ()

                def f():
                    return run(q, k, v, causal, table)
            ms = _graph_ms(f, 200)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump(res, open(os.path.join(OUT, "confirm.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
          "| dynamic/before %.3f, x flash %.3f" % (med["dynamic"] / med["before"], med["dynamic"] / med["flash"]))
