"""The forward's counter-drawn grids with each next tile drawn while the loading warp issues the current tile's loads (a
tensor atomic whose value is read after them) against the committed draw after them (a scalar atomic, whose value is
broadcast through shared memory at once). Bitwise checks against the committed kernel and float64 errors, then CUDA-
graph timings interleaved with SDPA flash and cuDNN, medians of the rounds. Run from the repository root with
draw.patch applied, and the unpatched fa2dist/ops/kernels/hopper.py (89462b1) copied beside this script as
hopper_base.py."""
import json, os, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fa2dist  # noqa: E402
import fa2dist.ops.attention as att  # noqa: E402
import hopper_base  # noqa: E402
from bench_attention import _graph_ms  # noqa: E402

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
NEW = att.attn_fwd_ws_kernel
KERNELS = {"base": hopper_base.attn_fwd_ws_kernel, "draw": NEW}
TILES = {"n128": (128, 128, 2, 1)}  # 128x128 tiles, one program per SM, on the counter-drawn grid
ORIG_TILES, ORIG_DYN = att.ws_tiles, att.ws_dynamic
SHAPES = [(64, 1024, True), (64, 512, True), (64, 2048, True), (64, 1024, False), (128, 1024, True),
          (128, 2048, True), (128, 1024, False)]


def fwd_fn(name, q, k, v, causal):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f

    kernel, _, tiles = name.partition("_")

    def f():
        att.attn_fwd_ws_kernel = KERNELS[kernel]
        if tiles:
            att.ws_tiles = lambda *a: TILES[tiles]
            att.ws_dynamic = lambda *a: True
        try:
            return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
        finally:
            att.attn_fwd_ws_kernel = NEW
            att.ws_tiles, att.ws_dynamic = ORIG_TILES, ORIG_DYN
    return f


checks = {}
for d, nq, nk in [(64, 1000, 1037), (64, 100, 137), (64, 2100, 2137), (64, 300, 64), (128, 1000, 1037),
                  (128, 777, 500), (128, 2000, 2000)]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(nq + d)
        q = torch.randn(3, 4, nq, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(3, 2, nk, d, device="cuda", dtype=dtype) for _ in range(2))
        k, v = (t.repeat_interleave(2, 1) for t in (k, v))
        mask = torch.ones(nq, nk, dtype=torch.bool, device="cuda").tril(diagonal=nk - nq)  # bottom-right aligned
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
        seen = mask.any(1)[None, None, :, None]  # rows that see no key: fa2dist writes 0, PyTorch NaN
        ref = torch.where(seen, ref, 0)
        torch_out = torch.where(seen, F.scaled_dot_product_attention(q, k, v, attn_mask=mask).double(), 0)
        base = fwd_fn("base", q, k, v, True)()
        outs = [fwd_fn("draw", q, k, v, True)() for _ in range(3)]
        base128 = fwd_fn("base_n128", q, k, v, True)()
        outs128 = [fwd_fn("draw_n128", q, k, v, True)() for _ in range(3)]
        row = {"torch_err": round((torch_out - ref).abs().max().item(), 6),
               "base_err": round((base.double() - ref).abs().max().item(), 6),
               "draw_err": round((outs[0].double() - ref).abs().max().item(), 6),
               "bitwise_vs_base": all(torch.equal(o, base) for o in outs),
               "n128_bitwise_vs_base": all(torch.equal(o, base128) for o in outs128)}
        checks[f"d{d} nq{nq} nk{nk} causal {str(dtype)[6:]}"] = row
        print("check", d, nq, nk, dtype, row, flush=True)

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
        names = ["cudnn", "flash", "base", "draw"] + (["base_n128", "draw_n128"] if d == 64 else [])
        if r % 2:
            names = names[::-1]
        for name in names:
            ms = _graph_ms(fwd_fn(name, q, k, v, causal), 100)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "draw.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f} ({x / med['flash']:.3f})" for k2, x in med.items()),
          f" draw/base {med['draw'] / med['base']:.3f}")
