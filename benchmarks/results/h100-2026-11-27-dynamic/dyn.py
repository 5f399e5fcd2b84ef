"""A/B: the warp-specialised forward with a dynamic tile counter (persistent programs drawing tiles in launch order)
against the committed grids; bitwise checks against one tile a program; CUDA-graph replays, interleaved, medians."""
import json, os, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import fa2dist  # noqa: E402
from fa2dist.ops import attention as att  # noqa: E402
from fa2dist.ops.kernels import hopper  # noqa: E402
from bench_attention import _graph_ms  # noqa: E402

OUT = os.environ.get("OUT", ".")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
ALL = tuple((d, c, 1 << 31) for d in (64, 128, 256) for c in (False, True))
BASE = dict(WS_TILES=hopper.WS_TILES, WS_PERSISTENT=hopper.WS_PERSISTENT, WS_DYNAMIC=hopper.WS_DYNAMIC)
_counter = att._tile_counter
_cached = {}


def cached_counter(device):
    if device not in _cached:
        _cached[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _cached[device]


VARIANTS = {
    "base": {},
    "static1": dict(WS_PERSISTENT=()),  # one tile a program everywhere
    "dyn": dict(WS_DYNAMIC=ALL),
    "dync": dict(WS_DYNAMIC=ALL, cached=True),
    "dyn128": dict(WS_DYNAMIC=ALL, WS_TILES=tuple(r for r in BASE["WS_TILES"] if r[0] != 64) + ((64, 0, (128, 128, 3, 1)),)),
}


def patch(p):
    for name, val in BASE.items():
        setattr(hopper, name, p.get(name, val))
    att._tile_counter = cached_counter if p.get("cached") else _counter


def run(q, k, v, causal, p, lse=False):
    patch(p)
    try:
        return fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", return_lse=lse)
    finally:
        patch({})


def check():
    torch.manual_seed(0)
    out = []
    cases = [  # b, hq, hk, nq, nk, d, causal
        (2, 4, 4, 1000, 1000, 128, False), (2, 4, 4, 1000, 1000, 128, True), (1, 6, 2, 700, 1300, 64, True),
        (1, 4, 4, 1300, 700, 64, True), (1, 2, 2, 64, 64, 64, False), (1, 1, 1, 300, 300, 256, True),
        (3, 8, 2, 2100, 2100, 64, True), (2, 16, 16, 4096, 4096, 64, True), (4, 16, 16, 1024, 1024, 256, True),
        (1, 3, 1, 5000, 5000, 128, True), (1, 3, 3, 5000, 4000, 128, False),
    ]
    for b, hq, hk, nq, nk, d, causal in cases:
        q = torch.randn(b, hq, nq, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, hk, nk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        o1, l1 = run(q, k, v, causal, VARIANTS["static1"], lse=True)
        for name in ("dyn", "dync", "dyn128"):
            res = []
            for _ in range(3):  # the cached counter must come back to zero after every launch
                o2, l2 = run(q, k, v, causal, VARIANTS[name], lse=True)
                res.append(bool(torch.equal(o1, o2) and torch.equal(l1, l2)))
            if name == "dyn128" and d != 64:
                continue
            with sdpa_kernel(SDPBackend.MATH):
                ref = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(hq // hk, 1),
                                                     v.double().repeat_interleave(hq // hk, 1),
                                                     is_causal=False, attn_mask=None if not causal else torch.ones(
                                                         nq, nk, dtype=torch.bool, device="cuda").tril(nk - nq))
            err = (o2.double() - ref).nan_to_num().abs().max().item()
            out.append(dict(case=[b, hq, hk, nq, nk, d, causal], variant=name, bitwise_equal_runs=res,
                            max_err_vs_f64=err))
            print(out[-1], flush=True)
    return out


SHAPES = [(64, 1024, True), (64, 1024, False), (64, 4096, True), (64, 16384, True), (128, 1024, True),
          (128, 4096, True), (128, 16384, True), (128, 1024, False), (128, 16384, False), (256, 1024, True),
          (256, 1024, False), (256, 16384, True)]
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}

if __name__ == "__main__":
    checks = check()
    json.dump({"checks": checks}, open(os.path.join(OUT, "dyn.json"), "w"), indent=1)
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
            q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            flops = 4 * b * h * n * n * d * (0.5 if causal else 1)
            key = f"d{d} n{n} {'causal' if causal else 'full'}"
            names = ["cudnn", "flash", "base", "dyn", "dync"] + (["dyn128"] if d == 64 and n > 2048 else [])
            if r % 2:
                names = names[::-1]
            for name in names:
                if name in BACKENDS:
                    def f():
                        with sdpa_kernel(BACKENDS[name]):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                else:
                    p = VARIANTS[name]

                    def f():
                        return run(q, k, v, causal, p)
                try:
                    ms = _graph_ms(f, 200)
                    res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
                except Exception as e:  # noqa: BLE001
                    res.setdefault(key, {}).setdefault(name, []).append(f"error {type(e).__name__}: {str(e)[:300]}")
            print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
        json.dump({"checks": checks, "tflops": res}, open(os.path.join(OUT, "dyn.json"), "w"), indent=1)
    for key, vals in res.items():
        med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items() if all(isinstance(x, float) for x in v2)}
        print(f"{key:20s}", "  ".join(f"{k2} {x:6.1f}" for k2, x in med.items()),
              "| dyn/base %.3f dync/base %.3f flash x%.3f" % (med["dyn"] / med["base"], med["dync"] / med["base"],
                                                            max(med["dyn"], med["dync"], med["base"]) / med["flash"]))
