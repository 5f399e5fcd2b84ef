"""A/B: fused seq-par dK/dV/dQ kernel, shipped (dQ by both computing warpgroups) vs a dQ warpgroup."""
import json, os, sys, itertools, importlib.util
import torch, triton
sys.path.insert(0, os.getcwd())
import fa2dist
from fa2dist.ops import attention
from fa2dist.ops.kernels import hopper
OUT = os.environ.get("OUT", ".")
spec = importlib.util.spec_from_file_location("hopper_old", os.environ.get("OLD_HOPPER", "hopper_old.py"))
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
ship = attention._attn_bwd_dkdv_ws
def make(rot, bufs):
    def launch(q, k, v, do, dk, dv, dq_acc, lse, delta, feats, layout, batch, nheads_kv, group, seqlen_q, seqlen_k, head_dim):
        if dq_acc is None or head_dim != 128:
            return ship(q, k, v, do, dk, dv, dq_acc, lse, delta, feats, layout, batch, nheads_kv, group, seqlen_q, seqlen_k, head_dim)
        block_m, block_n, stages = hopper.ws_bwd_tiles(head_dim, feats.window_right == 0)
        descs = attention._ws_descriptors(layout, head_dim, (q, block_m), (k, block_n // 2), (v, block_n // 2), (do, block_m),
                                          (dk, block_n // 2), (dv, block_n // 2))
        descs += attention._ws_descriptors("bhsd", head_dim // 2, (dq_acc, block_m))
        hopper.attn_bwd_dkdv_ws_kernel[(attention._cdiv(seqlen_k, block_n), nheads_kv, batch)](
            *descs, lse, delta, feats.softmax_scale, *attention._lse_strides(lse, layout), group, seqlen_q, seqlen_k,
            BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, STAGES=stages, CAUSAL=feats.window_right == 0,
            ATOMIC_DQ=True, ROTATE=rot, DQ_BUFS=bufs, num_warps=4)
    return launch
FORMS = {"ship": (False, 1), "rot": (True, 1), "buf2": (False, 2), "rot+buf2": (True, 2)}
def use(name):
    if name == "pass":
        attention.ws_fused_dq = lambda d, n: False
        attention._attn_bwd_dkdv_ws = ship
    else:
        attention.ws_fused_dq = lambda d, n: d == 128
        attention._attn_bwd_dkdv_ws = make(*FORMS[name])
names = sys.argv[1].split(",")
torch.manual_seed(0)
lines = []
for causal, shp in [(False, (2, 4, 2, 777, 4100)), (True, (1, 4, 4, 4200, 4100)), (True, (1, 2, 1, 4096, 4096)),
                    (False, (1, 8, 8, 130, 4097)), (True, (2, 3, 1, 5000, 4200)), (False, (3, 4, 2, 1000, 1000))]:
    B, H, HK, NQ, NK = shp
    q = torch.randn(B, H, NQ, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, HK, NK, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=True); do = torch.randn_like(out)
    ref = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    for name in names:
        use(name)
        g = torch.autograd.grad(fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False), (q, k, v), do)
        lines.append(f"check {shp} causal={causal} {name} " + str([round(((a.float() - b.float()).abs().max() / b.float().abs().max()).item(), 5) for a, b in zip(g, ref)]))
        print(lines[-1], flush=True)
def ms(q, k, v, causal, mode):
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False); do = torch.randn_like(out)
    if mode == "bwd":
        return triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), warmup=25, rep=100, return_mode="median")
    def fb():
        o = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", deterministic=False)
        return torch.autograd.grad(o, (q, k, v), do)
    return triton.testing.do_bench(fb, warmup=25, rep=100, return_mode="median")
res = []
for N, causal in itertools.product([int(x) for x in sys.argv[3].split(",")] if len(sys.argv) > 3 else (4096, 16384), (False, True)):
    H = 16; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fl = 4 * B * H * N * N * 128 / (2 if causal else 1)
    row = dict(N=N, causal=causal)
    for rep in range(2):
        for name in names:
            use(name)
            row[f"{name} bwd #{rep}"] = round(2.5 * fl / ms(q, k, v, causal, "bwd") / 1e9, 1)
            row[f"{name} f+b #{rep}"] = round(3.5 * fl / ms(q, k, v, causal, "fb") / 1e9, 1)
    print(json.dumps(row), flush=True); res.append(row)
json.dump(dict(checks=lines, rows=res), open(os.path.join(OUT, "ab_rot.json"), "w"), indent=1)
