"""A/B on the H100. PART fwd64: d64 forward tiles (two programs per SM, 64- vs 32-key tiles) and 192x128;
PART persist: persistent forward (mode 2) against one tile a program; PART bwd: dK/dV kernels whose accumulators
start from distinct registers (working tree) against HEAD. CUDA-graph replays (forward), do_bench (backward)."""
import json, os, sys, time, importlib.util
import torch, triton
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import fa2dist
from fa2dist.ops import attention
from fa2dist.ops.kernels import hopper
from bench_attention import _graph_ms
OUT = os.environ.get("OUT", ".")
PARTS = sys.argv[1:]
spec = importlib.util.spec_from_file_location("hopper_head", os.environ.get("HEAD_HOPPER", "hopper_head.py"))
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
NEW_BWD = hopper.attn_bwd_dkdv_ws_kernel
TILES0 = hopper.WS_TILES
ALL = tuple((d, c, 1 << 20) for d in (64, 128, 256) for c in (False, True))
res = dict(checks=[], rows=[])
t0 = time.time()
def log(kind, x):
    res[kind].append(x); print(json.dumps(x) if not isinstance(x, str) else x, round(time.time() - t0), "s", flush=True)
    json.dump(res, open(os.path.join(OUT, "ab2.json"), "w"), indent=1)
def ref_out(q, k, v, causal):
    H, HK = q.shape[1], k.shape[1]; NQ, NK = q.shape[2], k.shape[2]
    mask = torch.ones(NQ, NK, dtype=torch.bool, device="cuda").tril(NK - NQ) if causal else None
    return F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(H // HK, 1), v.double().repeat_interleave(H // HK, 1), attn_mask=mask)
def fwd_ms(q, k, v, causal):
    return _graph_ms(lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd"), 100)

D64 = {"64x3": (128, 64, 3, 2), "32x4": (128, 32, 4, 2), "32x6": (128, 32, 6, 2), "192": (192, 128, 3, 1)}
def use64(name):
    hopper.WS_TILES = tuple(r for r in TILES0 if r[0] != 64) + ((64, 0, D64[name]),)

if "fwd64" in PARTS:
    torch.manual_seed(0)
    for causal, (B, H, HK, NQ, NK) in [(False, (2, 4, 2, 777, 1500)), (True, (3, 7, 7, 1000, 1100)), (True, (2, 3, 3, 900, 300))]:
        q = torch.randn(B, H, NQ, 64, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, HK, NK, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        ref = ref_out(q, k, v, causal)
        for name in D64:
            use64(name)
            o = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
            log("checks", f"fwd64 {name} {(B, H, HK, NQ, NK)} causal={causal}: err vs f64 {(o.double() - ref).nan_to_num().abs().max().item():.2e}")
    for N in (1024, 2048, 4096):
        for causal in (False, True):
            H = 32; B = 16384 // N
            q, k, v = (torch.randn(B, H, N, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            fl = 4 * B * H * N * N * 64 / (2 if causal else 1)
            row = dict(part="fwd64", N=N, causal=causal)
            for rep in range(3):
                for name in D64:
                    use64(name)
                    row.setdefault(name, []).append(round(fl / fwd_ms(q, k, v, causal) / 1e9, 1))
            hopper.WS_TILES = TILES0
            log("rows", row)
    hopper.WS_TILES = TILES0

if "persist" in PARTS:
    def usep(mode):
        hopper.WS_PERSISTENT = ALL if mode else ()
        hopper.WS_PERSISTENT_MODE = mode
    for d, N, causal in [(128, 1024, False), (128, 2048, False), (128, 4096, False), (128, 16384, False),
                         (128, 1024, True), (128, 2048, True), (256, 1024, False), (256, 4096, False), (64, 1024, False)]:
        H = 2048 // d; B = 16384 // N
        q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        fl = 4 * B * H * N * N * d / (2 if causal else 1)
        row = dict(part="persist", d=d, N=N, causal=causal)
        for rep in range(4):
            for mode in (0, 2):
                usep(mode)
                row.setdefault(f"m{mode}", []).append(round(fl / fwd_ms(q, k, v, causal) / 1e9, 1))
        usep(0)
        log("rows", row)

if "bwd" in PARTS:
    def useb(name):
        attention.attn_bwd_dkdv_ws_kernel = NEW_BWD if name == "new" else old.attn_bwd_dkdv_ws_kernel
    def grads(q, k, v, do, causal, det):
        return torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=det), (q, k, v), do)
    torch.manual_seed(0)
    for d, causal, (B, H, HK, NQ, NK) in [(128, False, (2, 4, 2, 777, 1500)), (128, True, (1, 6, 3, 4200, 4100)), (64, True, (3, 5, 5, 1100, 1000)), (128, False, (1, 4, 4, 4096, 4096))]:
        q = torch.randn(B, H, NQ, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(B, HK, NK, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        do = torch.randn_like(q)
        for det in (True, False):
            useb("old"); g0 = grads(q, k, v, do, causal, det)
            useb("new"); g1 = grads(q, k, v, do, causal, det)
            log("checks", f"bwd d{d} {(B, H, HK, NQ, NK)} causal={causal} det={det}: dq,dk,dv equal {[torch.equal(a, b) for a, b in zip(g0, g1)]}, max diff {[round((a.float() - b.float()).abs().max().item(), 6) for a, b in zip(g0, g1)]}")
    def ms(fn):
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    for d, N, causal in [(128, 1024, False), (128, 1024, True), (128, 4096, False), (128, 4096, True), (128, 16384, False),
                         (128, 16384, True), (64, 1024, False), (64, 4096, True), (64, 16384, False)]:
        H = 2048 // d; B = 16384 // N
        q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        fl = 4 * B * H * N * N * d / (2 if causal else 1)
        row = dict(part="bwd", d=d, N=N, causal=causal)
        modes = ("det", "sp") if (d == 128 and N >= 4096) else ("det",)
        for rep in range(3):
            for name in ("old", "new"):
                useb(name)
                for mode in modes:
                    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=mode == "det"); do = torch.randn_like(out)
                    row.setdefault(f"{name} {mode}", []).append(round(2.5 * fl / ms(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True)) / 1e9, 1))
        useb("new")
        log("rows", row)
