"""Two 128-row sub-programs in one persistent program (SUBS = 2) at d64, against two programs per SM (the committed
causal rows below 1.5k keys) and 256-row tiles: the same warpgroups and rings as two programs per SM, with the
register split of four warpgroups in one program (no C7512 serialisation of the warpgroup MMAs, cross-compiled).
Interleaved with SDPA flash and cuDNN within each round, CUDA-graph replays, medians; outputs checked bitwise against
the committed kernel (the same tiles and arithmetic per row) and against float64. Run from the repository root with
subs.patch applied (it adds SUBS to attn_fwd_ws_kernel and ws_subprograms to the launch path)."""
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
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
PATCHED = ("ws_tiles", "ws_dynamic", "ws_persistent", "ws_output_buffer", "ws_k_free", "ws_subprograms")
ORIG = {name: getattr(att, name) for name in PATCHED}
# name: (tiles row, dynamic, persistent, O_BUF, K_FREE, sub-programs); None: the committed choice
VARIANTS = {
    "base": (None, None, None, None, None, None),
    "subs3": ((128, 64, 3, 1), True, True, True, False, 2), "subs4": ((128, 64, 4, 1), True, True, True, False, 2),
    "subs2kf": ((128, 64, 2, 1), True, True, True, True, 2), "r256": ((256, 64, 6, 1), True, True, True, False, 1),
}
PER_SHAPE = {
    (64, 1024, True): ["base", "subs3", "subs4", "subs2kf", "r256"], (64, 512, True): ["base", "subs3", "subs4"],
    (64, 1536, True): ["base", "subs3", "subs4"], (64, 2048, True): ["base", "subs3"],
    (64, 1024, False): ["base", "subs3", "subs4"], (64, 4096, True): ["base", "subs3", "subs4"],
}


def fwd_fn(name, q, k, v, causal):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f
    values = dict(zip(PATCHED, VARIANTS[name]))

    def f():
        for key, val in values.items():
            if val is not None:
                setattr(att, key, lambda *a, val=val: val)
        try:
            return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
        finally:
            for key, fn in ORIG.items():
                setattr(att, key, fn)
    return f


checks = {}
for d, n, causal in [(64, 1000, True), (64, 777, False), (64, 100, True), (64, 2100, True)]:
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(n + d)
        q = torch.randn(3, 4, n, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(3, 2, n + 37, d, device="cuda", dtype=dtype) for _ in range(2))
        k, v = (t.repeat_interleave(2, 1) for t in (k, v))
        base = fwd_fn("base", q, k, v, causal)()
        mask = None
        if causal:  # bottom-right aligned, as fa2dist's
            mask = torch.ones(n, n + 37, dtype=torch.bool, device="cuda").tril(diagonal=37)
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
        torch_err = (F.scaled_dot_product_attention(q, k, v, attn_mask=mask).double() - ref).abs().max().item()
        row = {"torch_err": round(torch_err, 6), "base_err": round((base.double() - ref).abs().max().item(), 6)}
        names = sorted({nm for (dd, _, _), nms in PER_SHAPE.items() if dd == d for nm in nms} - {"base"})
        for name in names:
            outs = [fwd_fn(name, q, k, v, causal)() for _ in range(3)]
            row[name] = (all(torch.equal(o, base) for o in outs), all(torch.equal(o, outs[0]) for o in outs),
                         round((outs[0].double() - ref).abs().max().item(), 6))
        checks[f"d{d} n{n} {'causal' if causal else 'full'} {str(dtype)[6:]}"] = row
        print("check", d, n, causal, dtype, row, flush=True)

x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < float(os.environ.get("WARM", "15")):
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res = {}
for r in range(ROUNDS):
    for (d, n, causal), variants in PER_SHAPE.items():
        b, h = 16384 // n, 2048 // d
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * d * (0.5 if causal else 1)
        key = f"d{d} n{n} {'causal' if causal else 'full'}"
        names = ["cudnn", "flash"] + variants
        if r % 2:
            names = names[::-1]
        for name in names:
            try:
                ms = _graph_ms(fwd_fn(name, q, k, v, causal), 100)
                res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
            except Exception as e:  # noqa: BLE001
                res.setdefault(key, {}).setdefault(name, []).append(f"error {type(e).__name__}: {str(e)[:300]}")
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "checks": checks, "device": torch.cuda.get_device_name()},
              open(os.path.join(OUT, "subs.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items() if all(isinstance(x, float) for x in v2)}
    print(f"{key:18s}", "  ".join(f"{k2} {x:6.1f} ({x / med['flash']:.3f})" for k2, x in med.items()))
