"""A/B on the H100: PART=fused (the fused sequence-parallel kernel: HEAD vs the next S^T issued early, 2/3 stages)
or PART=order (causal grids: INTERLEAVE 1/2/4/8). Writes $OUT/ab_<part>.json."""
import json, os, sys, importlib.util, time
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops import attention
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", ".")
PART = sys.argv[1]
spec = importlib.util.spec_from_file_location("hopper_old", os.environ.get("OLD_HOPPER", "hopper_old.py"))  # c9c86bd
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
NEW = hopper.attn_bwd_dkdv_ws_kernel
WS_BWD0 = hopper.WS_BWD


class Inject:
    def __init__(self, kernel, drop=(), **extra):
        self.kernel, self.drop, self.extra = kernel, drop, extra
    def __getitem__(self, grid):
        def launch(*a, **kw):
            kw = {k: v for k, v in kw.items() if k not in self.drop}
            return self.kernel[grid](*a, **kw, **self.extra)
        return launch


def use(name):
    stages = 3 if name.endswith("s3") else 2
    hopper.WS_BWD = tuple((d, c, (t[0], t[1], stages) if d == 128 else t) for d, c, t in WS_BWD0)
    if name == "head":
        attention.attn_bwd_dkdv_ws_kernel = Inject(old.attn_bwd_dkdv_ws_kernel, drop=("INTERLEAVE",))
    elif name.startswith("late"):
        attention.attn_bwd_dkdv_ws_kernel = Inject(NEW, EARLY_S=False)
    elif name.startswith("early"):
        attention.attn_bwd_dkdv_ws_kernel = NEW
    elif name.startswith("g"):
        attention.attn_bwd_dkdv_ws_kernel = NEW
        g = int(name[1:])
        hopper.CAUSAL_INTERLEAVE.update(fwd=g, dkdv=g, dq=g)


def grads(q, k, v, do, causal, det):
    return torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det), (q, k, v), do)


def ms(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


names = ("head", "early", "early_s3") if PART == "fused" else ("g1", "g2", "g4", "g8")
t0 = time.time()
lines = []
torch.manual_seed(0)
checks = [(False, (2, 4, 2, 777, 4100)), (True, (1, 6, 3, 4200, 4100)), (True, (3, 5, 5, 1100, 1000))]
for causal, shp in checks:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    use("head" if PART == "fused" else "g1")
    out0 = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True); do = torch.randn_like(out0)
    ref = torch.autograd.grad(out0, (q, k, v), do)
    ref_sp = grads(q, k, v, do, causal, False)
    for name in names:
        use(name)
        out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True)
        g_det = grads(q, k, v, do, causal, True)
        g = grads(q, k, v, do, causal, False)
        err = [round(((a.float() - b.float()).abs().max() / b.float().abs().max()).item(), 5) for a, b in zip(g, ref)]
        lines.append(f"check {shp} causal={causal} {name}: out equal {torch.equal(out, out0)}, det grads equal "
                     f"{all(torch.equal(a, b) for a, b in zip(g_det, ref))}, sp err vs det {err}")
        print(lines[-1], flush=True)
print("checks", round(time.time() - t0), "s", flush=True)

if PART == "fused":
    shapes = [(128, N, c) for N in (4096, 16384) for c in (False, True)]
    modes = ("sp_bwd", "sp_fb", "det_bwd")
else:
    shapes = [(128, 1024, True), (128, 4096, True), (128, 16384, True), (64, 4096, True), (64, 16384, True)]
    modes = ("fwd", "det_bwd", "sp_bwd")
res = []
for d, N, causal in shapes:
    H = 2048 // d; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 4 * B * H * N * N * d / (2 if causal else 1)
    row = dict(d=d, N=N, causal=causal)
    for rep in range(2):
        for name in names:
            use(name)
            for mode in modes:
                det = mode.startswith("det")
                if mode == "fwd":
                    t = ms(lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd"))
                    f = fl
                elif mode.endswith("bwd"):
                    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det); do = torch.randn_like(out)
                    t = ms(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True)); f = 2.5 * fl
                else:
                    do = torch.randn_like(q)
                    t = ms(lambda: grads(q, k, v, do, causal, det)); f = 3.5 * fl
                row[f"{name} {mode} #{rep}"] = round(f / t / 1e9, 1)
    print(json.dumps(row), round(time.time() - t0), "s", flush=True); res.append(row)
    json.dump(dict(checks=lines, rows=res), open(os.path.join(OUT, f"ab_{PART}.json"), "w"), indent=1)
