"""A/B of the Gluon forward: HEAD (old) vs P converted to 16 bits once the last P V has read its registers (new);
and, with the new order, d64 192x128 tiles (no spills now). Kernel time from CUDA-graph replays."""
import json, os, sys, importlib.util
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "benchmarks")
import fa2dist
from fa2dist.ops import attention
from fa2dist.ops.kernels import hopper
from bench_attention import _graph_ms
OUT = os.environ.get("OUT", ".")
spec = importlib.util.spec_from_file_location("hopper_old", os.environ.get("OLD_HOPPER", "hopper_old.py"))
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
SHIP = hopper.WS_TILES
def tiles_with(d, row):
    return tuple(r for r in SHIP if r[0] != d) + ((d, 0, row),)
VARIANTS = {
    "old": (old, SHIP), "new": (hopper, SHIP),
    "new d64 192x128x2": (hopper, tiles_with(64, (192, 128, 2, 1))),
    "new d64 192x128x3": (hopper, tiles_with(64, (192, 128, 3, 1))),
    "new d256 128x64x2": (hopper, tiles_with(256, (128, 64, 2, 1))),
}
def use(name):
    mod, tiles = VARIANTS[name]
    attention.attn_fwd_ws_kernel = mod.attn_fwd_ws_kernel
    hopper.WS_TILES = tiles
torch.manual_seed(0)
lines = []
def ref64(q, k, v, causal):
    g = q.shape[1] // k.shape[1]
    qd, kd, vd = q.double(), k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = qd @ kd.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        nq, nk = q.shape[2], k.shape[2]
        i = torch.arange(nq, device=q.device)[:, None]; j = torch.arange(nk, device=q.device)[None, :]
        s = s.masked_fill(j > i + nk - nq, float("-inf"))
    return torch.nan_to_num(torch.softmax(s, -1)) @ vd
for D, causal, shp in [(64, False, (2, 4, 2, 777, 3100)), (64, True, (1, 4, 4, 3000, 2900)), (64, True, (1, 2, 2, 300, 2100)),
                       (64, False, (1, 2, 1, 1, 2100)), (128, True, (2, 3, 1, 1000, 1300)), (256, True, (1, 4, 2, 1100, 1000)),
                       (64, False, (1, 2, 2, 555, 555)), (256, False, (1, 2, 2, 300, 64))]:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, HK, NK, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    r = ref64(q, k, v, causal)
    outs = {}
    for name in VARIANTS:
        use(name)
        o = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
        outs[name] = o
        lines.append(f"check d{D} {shp} causal={causal} {name}: err {((o.double() - r).abs().max() / r.abs().max()).item():.5f} bitwise==old {torch.equal(o, outs['old'])}")
        print(lines[-1], flush=True)
res = []
for D, N in [(64, 1024), (64, 2048), (64, 4096), (64, 16384), (128, 1024), (128, 4096), (128, 16384), (256, 1024), (256, 4096), (256, 16384)]:
    H = 2048 // D; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for causal in (False, True):
        fl = 4 * B * H * N * N * D / (2 if causal else 1)
        row = dict(D=D, N=N, causal=causal)
        names = ["old", "new"] + [n for n in VARIANTS if n.startswith(f"new d{D} ")]
        for rep in range(3):
            for name in names:
                use(name)
                row[f"{name} #{rep}"] = round(fl / _graph_ms(lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd"), 100) / 1e9, 1)
        print(json.dumps(row), flush=True); res.append(row)
json.dump(dict(checks=lines, rows=res), open(os.path.join(OUT, "ab_fwd.json"), "w"), indent=1)
