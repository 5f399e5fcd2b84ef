"""Kept as run (H200, 2026-11-26): correctness scan, tile timings and the ping-pong A/B of the first version of
the warp-specialised forward (kernel_versions.patch: the version with the PINGPONG option). Not maintained: the shipped
kernel's arguments differ. Usage then: python ws_bench.py check|bench|tune, results under $OUT."""
import json, math, os, sys, time, itertools
import torch, triton
import torch.nn.functional as F
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GTD
sys.path.insert(0, os.getcwd())
from fa2dist.ops.kernels.hopper import attn_fwd_ws_kernel
import fa2dist
from fa2dist.ops import attention as A

OUT = os.environ.get("OUT", ".")
GDT = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}

def strides(t, layout):
    return (t.stride(0), t.stride(2), t.stride(1)) if layout == "bshd" else (t.stride(0), t.stride(1), t.stride(2))

def desc(x, layout, rows):
    heads, n = (x.shape[2], x.shape[1]) if layout == "bshd" else (x.shape[1], x.shape[2])
    d = x.shape[3]
    lay = gl.NVMMASharedLayout.get_default_for([1, 1, rows, d], GDT[x.dtype])
    return GTD(x, [x.shape[0], heads, n, d], [*strides(x, layout), 1], [1, 1, rows, d], lay)

def ws_fwd(q, k, v, causal, layout="bhsd", bm=128, bn=128, stages=2, scale=None, pp=True):
    if layout == "bshd":
        B, NQ, H, D = q.shape; NK = k.shape[1]; HK = k.shape[2]
    else:
        B, H, NQ, D = q.shape; NK = k.shape[2]; HK = k.shape[1]
    scale = scale or 1 / math.sqrt(D)
    o = torch.empty_like(q)
    lse = torch.empty(B, H, NQ, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(NQ, bm), B * H)
    attn_fwd_ws_kernel[grid](desc(q, layout, bm), desc(k, layout, bn), desc(v, layout, bn), desc(o, layout, bm // 2), lse,
                             scale, lse.stride(0), lse.stride(1), H, H // HK, NQ, NK,
                             BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=D, STAGES=stages, CAUSAL=causal, num_warps=4)
    return o, lse

def ref(q, k, v, causal, layout):
    if layout == "bshd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    q, k, v = (t.double() for t in (q, k, v))
    H, HK = q.shape[1], k.shape[1]
    k = k.repeat_interleave(H // HK, 1); v = v.repeat_interleave(H // HK, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    NQ, NK = q.shape[2], k.shape[2]
    if causal:
        i = torch.arange(NQ, device=q.device)[:, None]; j = torch.arange(NK, device=q.device)[None]
        s = s.masked_fill(j > i + NK - NQ, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    o = p @ v
    lse = torch.where(torch.isinf(lse), torch.full_like(lse, float("inf")), lse)
    if layout == "bshd":
        o = o.transpose(1, 2)
    return o, lse

def check():
    rows = []
    torch.manual_seed(0)
    shapes = [(2, 4, 4, 1000, 1000), (1, 3, 3, 333, 517), (1, 8, 2, 777, 777), (1, 2, 2, 300, 64), (1, 4, 4, 1, 77),
              (2, 4, 4, 4096, 4096), (1, 2, 1, 129, 1031)]
    for d, causal, dt, layout, (B, H, HK, NQ, NK) in itertools.product((64, 128), (False, True), (torch.bfloat16, torch.float16), ("bhsd", "bshd"), shapes):
        if layout == "bshd":
            q = torch.randn(B, NQ, H, d, device="cuda", dtype=dt); k = torch.randn(B, NK, HK, d, device="cuda", dtype=dt); v = torch.randn_like(k)
        else:
            q = torch.randn(B, H, NQ, d, device="cuda", dtype=dt); k = torch.randn(B, HK, NK, d, device="cuda", dtype=dt); v = torch.randn_like(k)
        for bn, st, pp in ((128, 2, True), (64, 3, False), (64, 3, True)):
            o, lse = ws_fwd(q, k, v, causal, layout, bn=bn, stages=st, pp=pp)
            ro, rlse = ref(q, k, v, causal, layout)
            # PyTorch's own error at this precision: the same math in dt
            qq, kk, vv = (t.transpose(1, 2) if layout == "bshd" else t for t in (q, k, v))
            po = F.scaled_dot_product_attention(qq, kk.repeat_interleave(H // HK, 1), vv.repeat_interleave(H // HK, 1), is_causal=False,
                                                attn_mask=(torch.ones(NQ, NK, device="cuda", dtype=torch.bool).tril(NK - NQ) if causal else None))
            if layout == "bshd": po = po.transpose(1, 2)
            fin = torch.isfinite(rlse)
            err = (o.double() - ro).abs().nan_to_num(1e9).max().item()
            perr = (po.double() - ro).abs().nan_to_num(0).max().item()
            lerr = (lse.double() - rlse)[fin].abs().max().item() if fin.any() else 0.0
            inf_ok = bool((lse[~fin] == float("inf")).all()) and bool((o.transpose(1, 2) if layout == "bshd" else o)[~fin].eq(0).all()) if (~fin).any() else True
            rows.append(dict(d=d, causal=causal, dtype=str(dt), layout=layout, shape=(B, H, HK, NQ, NK), bn=bn, stages=st, pp=pp,
                             err=err, torch_err=perr, ratio=err / max(perr, 1e-6), lse_err=lerr, inf_ok=inf_ok))
            o2, lse2 = ws_fwd(q, k, v, causal, layout, bn=bn, stages=st, pp=pp)
            rows[-1]["bitwise_repeat"] = bool(torch.equal(o, o2) and torch.equal(lse, lse2))
    bad = [r for r in rows if r["ratio"] > 2 or r["lse_err"] > 1e-2 or not r["inf_ok"] or not r["bitwise_repeat"]]
    print("check:", len(rows), "cases,", len(bad), "bad; worst ratio", max(r["ratio"] for r in rows), "worst lse", max(r["lse_err"] for r in rows))
    for r in bad[:20]: print("BAD", r)
    json.dump(rows, open(f"{OUT}/ws_check.json", "w"), indent=1)
    return not bad

def bench():
    from triton.testing import do_bench
    res = []
    for d, N, causal in itertools.product((64, 128), (1024, 4096, 16384), (False, True)):
        H = 2048 // d; B = 16384 // N
        q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * B * H * N * N * d / (2 if causal else 1)
        tf = lambda ms: flops / ms / 1e9
        row = dict(d=d, N=N, causal=causal)
        variants = [(128, 2), (128, 3), (64, 4)] if d == 64 else [(128, 2), (128, 3), (64, 3)]
        for (bn, st), pp in itertools.product(variants, (False, True)):
            try:
                row[f"ws_{bn}_{st}_{'pp' if pp else 'np'}"] = tf(do_bench(lambda: ws_fwd(q, k, v, causal, bn=bn, stages=st, pp=pp), warmup=50, rep=300))
            except Exception as e:
                row[f"ws_{bn}_{st}_{'pp' if pp else 'np'}"] = repr(e)[:100]
        row["fa2dist"] = tf(do_bench(lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd"), warmup=50, rep=300)) if "layout" in fa2dist.flash_attention.__code__.co_varnames else None
        from torch.nn.attention import sdpa_kernel, SDPBackend
        for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            with sdpa_kernel(be):
                row[name] = tf(do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), warmup=50, rep=300))
        print(json.dumps({k_: (round(v_, 1) if isinstance(v_, float) else v_) for k_, v_ in row.items()}), flush=True)
        res.append(row)
    json.dump(res, open(f"{OUT}/ws_bench.json", "w"), indent=1)


def tune():
    from triton.testing import do_bench
    res = []
    for d, N, causal in itertools.product((64,), (4096, 16384), (False, True)):
        H = 2048 // d; B = 16384 // N
        q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * B * H * N * N * d / (2 if causal else 1)
        row = dict(d=d, N=N, causal=causal)
        for bn, st in ((128, 3), (128, 4), (256, 2), (256, 3)):
            o, _ = ws_fwd(q, k, v, causal, bn=bn, stages=st)
            o3, _ = ws_fwd(q, k, v, causal, bn=128, stages=3)
            row[f"ws_{bn}_{st}_maxdiff"] = (o.float() - o3.float()).abs().max().item()
            row[f"ws_{bn}_{st}"] = flops / do_bench(lambda: ws_fwd(q, k, v, causal, bn=bn, stages=st), warmup=50, rep=300) / 1e9
        print(json.dumps({k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in row.items()}), flush=True)
        res.append(row)
    json.dump(res, open(f"{OUT}/ws_tune.json", "w"), indent=1)

if __name__ == "__main__":
    {"check": check, "bench": bench, "tune": tune}[sys.argv[1]]()
