"""The d64 two-programs-per-SM forward (128x64 tiles) with each step's P V product waited for before the q.k product
is issued (no serialised wgmma: both fit 104 registers) against the committed kernel (ptxas C7512: every wgmma
waited for). Bitwise checks and float64 errors, then CUDA-graph timings interleaved with SDPA flash and cuDNN.
Run from the repository root of the commit before the change, with first_form.patch applied to a copy of
fa2dist/ops/kernels/hopper.py at ab_old/hv_e4.py (argument 2 names such copies, comma-separated)."""
import json, os, sys, time, importlib.util
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import fa2dist  # noqa: E402
import fa2dist.ops.attention as att  # noqa: E402
from bench_attention import _graph_ms  # noqa: E402


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "ab_old", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
VARIANTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["hv_e4"]
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
BASE = att.attn_fwd_ws_kernel
KERNELS = {"base": BASE, **{v: load(v).attn_fwd_ws_kernel for v in VARIANTS}}
TWO = (128, 64, 3, 2)
ORIG_TILES = att.ws_tiles
SHAPES = [(64, 1024, True, None), (64, 512, True, None), (64, 1536, True, TWO), (64, 2048, True, TWO),
          (64, 1024, False, TWO), (64, 2048, True, None), (64, 1024, False, None)]


def fwd_fn(name, q, k, v, causal, tiles=None):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f

    def f():
        att.attn_fwd_ws_kernel = KERNELS[name]
        if tiles:
            att.ws_tiles = lambda *a: tiles
        try:
            return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
        finally:
            att.attn_fwd_ws_kernel = BASE
            att.ws_tiles = ORIG_TILES
    return f


checks = {}
for d, nq, nk, causal in [(64, 1000, 1037, True), (64, 100, 137, True), (64, 1100, 1100, True), (64, 300, 64, True),
                          (64, 1024, 1024, True), (64, 777, 1000, False), (64, 1000, 1037, False)]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(nq + d)
        q = torch.randn(3, 4, nq, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(3, 2, nk, d, device="cuda", dtype=dtype) for _ in range(2))
        k, v = (t.repeat_interleave(2, 1) for t in (k, v))
        mask = torch.ones(nq, nk, dtype=torch.bool, device="cuda").tril(diagonal=nk - nq) if causal else None
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
        torch_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).double()
        if causal:
            seen = mask.any(1)[None, None, :, None]  # rows that see no key: fa2dist writes 0, PyTorch NaN
            ref, torch_out = torch.where(seen, ref, 0), torch.where(seen, torch_out, 0)
        base = fwd_fn("base", q, k, v, causal, TWO)()
        row = {"torch_err": round((torch_out - ref).abs().max().item(), 6),
               "base_err": round((base.double() - ref).abs().max().item(), 6)}
        for name in VARIANTS:
            outs = [fwd_fn(name, q, k, v, causal, TWO)() for _ in range(3)]
            row[name + "_err"] = round((outs[0].double() - ref).abs().max().item(), 6)
            row[name + "_bitwise"] = all(torch.equal(o, base) for o in outs)
        checks[f"d{d} nq{nq} nk{nk} {'causal' if causal else 'full'} {str(dtype)[6:]}"] = row
        print("check", d, nq, nk, causal, dtype, row, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < float(os.environ.get("WARM", "15")):
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for d, n, causal, tiles in SHAPES:
        b, h = 16384 // n, 2048 // d
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * d * (0.5 if causal else 1)
        key = f"d{d} n{n} {'causal' if causal else 'full'}{' 2cta' if tiles else ''}"
        names = (["cudnn", "flash"] if tiles is None else []) + ["base"] + VARIANTS
        if r % 2:
            names = names[::-1]
        for name in names:
            ms = _graph_ms(fwd_fn(name, q, k, v, causal, tiles), 100)
            res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}, open(os.path.join(OUT, "e4.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
    ref = med.get("flash")
    print(f"{key:24s}", "  ".join(f"{k2} {x:6.1f}" + (f" ({x / ref:.3f})" if ref else "") for k2, x in med.items()),
          " ".join(f"{v}/base {med[v] / med['base']:.3f}" for v in VARIANTS))
