"""Forward tiles, interleave and persistence of the warp-specialised forward at the shapes that miss issue #8's
1.5x-flash target: each variant patched into fa2dist.ops.kernels.hopper's tables, interleaved with SDPA flash and
cuDNN within each round, CUDA-graph replays, medians."""
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
BASE = dict(WS_TILES=hopper.WS_TILES, WS_INTERLEAVE=hopper.WS_INTERLEAVE, WS_PERSISTENT=hopper.WS_PERSISTENT)


def tiles(d, row):
    return tuple(r for r in BASE["WS_TILES"] if r[0] != d) + ((d, 0, row),)


# (d, n, causal) -> {variant: patch}
CASES = {
    (64, 1024, True): {
        "base": {},
        "128x128s3": dict(WS_TILES=tiles(64, (128, 128, 3, 1))),
        "192x128s3": dict(WS_TILES=tiles(64, (192, 128, 3, 1))),
        "128x64s4c2": dict(WS_TILES=tiles(64, (128, 64, 4, 2))),
        "persist": dict(WS_PERSISTENT=((64, True, 1 << 31),)),
        "inter1": dict(WS_INTERLEAVE=((128, 8192),)),
    },
    (64, 1024, False): {
        "base": {},
        "128x128s3": dict(WS_TILES=tiles(64, (128, 128, 3, 1))),
        "128x64s4c2": dict(WS_TILES=tiles(64, (128, 64, 4, 2))),
        "192x64s4": dict(WS_TILES=tiles(64, (192, 64, 4, 1))),
    },
    (64, 4096, True): {
        "base": {},
        "128x128s3": dict(WS_TILES=tiles(64, (128, 128, 3, 1))),
        "128x128s4": dict(WS_TILES=tiles(64, (128, 128, 4, 1))),
        "128x64s3c2": dict(WS_TILES=tiles(64, (128, 64, 3, 2))),
        "inter1": dict(WS_INTERLEAVE=((128, 8192),)),
        "inter8": dict(WS_INTERLEAVE=((128, 8192),)),  # fwd_fn sets 8 pairs
        "persist": dict(WS_PERSISTENT=((64, True, 1 << 31),) + BASE["WS_PERSISTENT"]),
    },
    (256, 1024, True): {
        "base": {},
        "persist": dict(WS_PERSISTENT=((256, True, 1 << 31),) + BASE["WS_PERSISTENT"]),
        "inter4": dict(WS_INTERLEAVE=BASE["WS_INTERLEAVE"] + ((256, 4096),)),
        "128x64s2": dict(WS_TILES=tiles(256, (128, 64, 2, 1))),
        "128x32s3": dict(WS_TILES=tiles(256, (128, 32, 3, 1))),
    },
    (256, 1024, False): {
        "base": {},
        "persist": dict(WS_PERSISTENT=((256, False, 1 << 31),) + BASE["WS_PERSISTENT"]),
        "128x32s3": dict(WS_TILES=tiles(256, (128, 32, 3, 1))),
    },
}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
_orig_interleave = hopper.ws_interleave


def patch(p):
    for name, val in BASE.items():
        setattr(hopper, name, p.get(name, val))
    hopper.ws_interleave = _orig_interleave


def fwd_fn(name, q, k, v, causal, p):
    if name in BACKENDS:
        def f():
            with sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f

    def f():
        patch(p)
        if name == "inter8":
            import fa2dist.ops.attention as att
            att.ws_interleave = lambda d, n: 8
        try:
            return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
        finally:
            import fa2dist.ops.attention as att
            att.ws_interleave = _orig_interleave
    return f


x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < float(os.environ.get("WARM", "15")):
    for _ in range(50):
        x @ x
    torch.cuda.synchronize()
del x
res, checks = {}, {}
for r in range(ROUNDS):
    for (d, n, causal), variants in CASES.items():
        b, h = 16384 // n, 2048 // d
        torch.manual_seed(r)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * n * n * d * (0.5 if causal else 1)
        key = f"d{d} n{n} {'causal' if causal else 'full'}"
        names = ["cudnn", "flash"] + list(variants)
        if r % 2:
            names = names[::-1]
        ref = None
        for name in names:
            p = variants.get(name, {})
            f = fwd_fn(name, q, k, v, causal, p)
            try:
                if r == 0 and name not in BACKENDS:
                    out = f().float()
                    if ref is None:
                        with sdpa_kernel(BACKENDS["flash"]):
                            ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal).float()
                    checks.setdefault(key, {})[name] = round((out - ref).abs().max().item(), 5)
                ms = _graph_ms(f, 200)
                res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
            except Exception as e:  # noqa: BLE001
                res.setdefault(key, {}).setdefault(name, []).append(f"error {type(e).__name__}: {str(e)[:200]}")
            finally:
                patch({})
        print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump({"tflops": res, "max_abs_diff_vs_flash": checks}, open(os.path.join(OUT, "knobs.json"), "w"), indent=1)
for key, vals in res.items():
    med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items() if all(isinstance(x, float) for x in v2)}
    print(f"{key:20s}", "  ".join(f"{k2} {x:6.1f} ({x / med['flash']:.3f})" for k2, x in med.items()))
print(json.dumps(checks))
