"""Exponent emulation on the FMA units in the warp-specialised forward: EXP_EMU (one in every 2, 4 or 8 exponents of
unmasked tiles as a cubic) against all on the special-function unit, interleaved with SDPA flash and cuDNN within
each round, CUDA-graph replays, medians; plus errors against a float32 reference."""
import json, os, sys, time
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
EMUS = [int(a) for a in (sys.argv[2].split(",") if len(sys.argv) > 2 else "0,8,4,2".split(","))]
SHAPES = [(64, 1024, False), (64, 1024, True), (64, 4096, True), (64, 4096, False), (64, 16384, True),
          (128, 1024, True), (128, 4096, False), (128, 16384, True)]
if len(sys.argv) > 3:
    SHAPES = [s for s in SHAPES if f"{s[0]}/{s[1]}/{int(s[2])}" in sys.argv[3].split(",")]
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
_orig = att.ws_launch_options


def fwd_fn(name, q, k, v, causal):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f
    emu = int(name[1:])

    def f():
        att.ws_launch_options = lambda bm, ctas: {**_orig(bm, ctas), "EXP_EMU": emu}
        try:
            return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
        finally:
            att.ws_launch_options = _orig
    return f


# errors first (small batch, fresh inputs, odd lengths too), against float32 math
checks = {}
for d, n, causal in [(64, 1024, False), (64, 1000, True), (64, 4096, True), (128, 1024, True), (64, 777, False),
                     (128, 2000, False)]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(n + d)
        q, k, v = (torch.randn(2, 4, n, d, device="cuda", dtype=dtype) for _ in range(3))
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        row = {}
        with sdpa_kernel(BACKENDS["flash"]):
            row["flash"] = (F.scaled_dot_product_attention(q, k, v, is_causal=causal).float() - ref).abs().max().item()
        for e in EMUS:
            out = fwd_fn(f"e{e}", q, k, v, causal)().float()
            row[f"e{e}"] = (out - ref).abs().max().item()
        checks[f"d{d} n{n} {'causal' if causal else 'full'} {str(dtype)[6:]}"] = row
        print("err", d, n, causal, dtype, {a: f"{b:.2e}" for a, b in row.items()}, flush=True)

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
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * d * (0.5 if causal else 1)
        key = f"d{d} n{n} {'causal' if causal else 'full'}"
        names = ["cudnn", "flash"] + [f"e{e}" for e in EMUS]
        if r % 2:
            names = names[::-1]
        for name in names:
            try:
                ms = _graph_ms(fwd_fn(name, q, k, v, causal), 200)
                res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
            except Exception as e:  # noqa: BLE001
                res.setdefault(key, {}).setdefault(name, []).append(f"error {type(e).__name__}: {str(e)[:300]}")
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "max_abs_err_vs_fp32": checks, "device": torch.cuda.get_device_name()},
              open(os.path.join(OUT, "emu.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items() if all(isinstance(x, float) for x in v2)}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f} ({x / med['flash']:.3f})" for k2, x in med.items()))
