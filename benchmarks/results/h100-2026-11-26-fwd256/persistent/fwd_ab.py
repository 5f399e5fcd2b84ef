"""Kept as run (H100, 2026-11-26): forward A/B of the persistent kernel (persistent_kernel.patch, applied to
fa2dist/ops/kernels/hopper.py) against the committed kernel (a copy of it imported as hopper_head), with a float64
correctness scan first. An earlier form of this script (the exponentials on the FMA pipe, ../exp2_fma/) passed an
EXP2_FMA setting instead of the grid. Imports its helpers (ws_bench: descriptors, reference) from a scratch folder.
Not maintained."""
import json, math, os, sys, itertools
sys.path.insert(0, os.getcwd()); sys.path.append(os.path.join(os.getcwd(), "ab_old"))
import torch, triton
import torch.nn.functional as F
from dataclasses import replace
from triton.testing import do_bench
from torch.nn.attention import sdpa_kernel, SDPBackend
import fa2dist
from fa2dist.configs import select_config
from fa2dist.ops.kernels.hopper import attn_fwd_ws_kernel
import hopper_head
NSM = torch.cuda.get_device_properties(0).multi_processor_count
from ws_bench import desc, ref
OUT = os.environ.get("OUT", ".")

def fwd(q, k, v, causal, bm, bn, st, grid, layout="bhsd"):
    """grid: "head" (the previous kernel), "all" (one program per tile), or a number of programs (x SMs)."""
    if layout == "bshd":
        B, NQ, H, D = q.shape; NK = k.shape[1]; HK = k.shape[2]
    else:
        B, H, NQ, D = q.shape; NK = k.shape[2]; HK = k.shape[1]
    o = torch.empty_like(q); lse = torch.empty(B, H, NQ, device=q.device, dtype=torch.float32)
    descs = (desc(q, layout, 64), desc(k, layout, bn), desc(v, layout, bn), desc(o, layout, 64))
    if grid == "head":
        hopper_head.attn_fwd_ws_kernel[(triton.cdiv(NQ, bm), B * H)](
            *descs, lse, 1 / math.sqrt(D), lse.stride(0), lse.stride(1), H, H // HK, NQ, NK, BLOCK_M=bm, BLOCK_N=bn,
            HEAD_DIM=D, STAGES=st, CAUSAL=causal, num_warps=4)
        return o, lse
    total = triton.cdiv(NQ, bm) * B * H
    n = total if grid == "all" else min(total, int(grid[1:]) if isinstance(grid, str) else grid * NSM)
    attn_fwd_ws_kernel[(n,)](
        *descs, lse, 1 / math.sqrt(D), lse.stride(0), lse.stride(1), B, H, H // HK, NQ, NK, BLOCK_M=bm, BLOCK_N=bn,
        HEAD_DIM=D, STAGES=st, CAUSAL=causal, num_warps=4)
    return o, lse

V = {64: [(128, 128, 3, g) for g in ("head", "all", 1)] + [(192, 64, 4, g) for g in ("head", 1)],
     128: [(128, 128, 3, g) for g in ("head", "all", 1)],
     256: [(128, 32, 4, g) for g in ("head", "all", 1)] + [(128, 32, 5, 1), (128, 64, 2, 1)]}
CHECK = {64: [(128, 128, 3, 1), (128, 128, 3, "n7"), (192, 64, 4, 1)], 128: [(128, 128, 3, 1), (128, 128, 3, "n7"), (128, 128, 3, "all")],
         256: [(128, 32, 4, 1), (128, 32, 4, "n7"), (128, 32, 5, 1), (128, 64, 2, 1)]}
BUDGET = float(os.environ.get("CHECK_S", "200"))
name = lambda bm, bn, st, g: f"ws_{bm}_{bn}_{st}_{g}"

def check():
    torch.manual_seed(1); bad = 0; worst = {}
    import time; t0 = time.time()
    shapes = [(1, 3, 3, 333, 517), (2, 8, 2, 777, 777), (1, 4, 4, 1, 77), (1, 2, 2, 300, 64), (3, 4, 4, 2048, 2048)]
    for d, causal, layout, dt, (B, H, HK, NQ, NK) in itertools.product((128, 256, 64), (False, True), ("bhsd", "bshd"),
                                                                      (torch.bfloat16,), shapes):
        if time.time() - t0 > BUDGET:
            print("check: out of time at", d, causal, layout); break
        mk = (lambda h, n: torch.randn(B, n, h, d, device="cuda", dtype=dt)) if layout == "bshd" else (lambda h, n: torch.randn(B, h, n, d, device="cuda", dtype=dt))
        q, k, v = mk(H, NQ), mk(HK, NK), mk(HK, NK)
        ro, rlse = ref(q, k, v, causal, layout)
        qq, kk, vv = (t.transpose(1, 2) if layout == "bshd" else t for t in (q, k, v))
        po = F.scaled_dot_product_attention(qq, kk.repeat_interleave(H // HK, 1), vv.repeat_interleave(H // HK, 1),
                                            attn_mask=(torch.ones(NQ, NK, device="cuda", dtype=torch.bool).tril(NK - NQ) if causal else None))
        if layout == "bshd": po = po.transpose(1, 2)
        perr = (po.double() - ro).abs().nan_to_num(0).max().item()
        for bm, bn, st, e in CHECK[d]:
            o, lse = fwd(q, k, v, causal, bm, bn, st, e, layout)
            err = (o.double() - ro).abs().nan_to_num(1e9).max().item()
            fin = torch.isfinite(rlse)
            lerr = (lse.double() - rlse)[fin].abs().max().item() if fin.any() else 0
            ok = err <= 2 * perr + 1e-5 and lerr < 1e-3 and bool((lse[~fin] == float("inf")).all())
            key = (d, name(bm, bn, st, e)); worst[key] = max(worst.get(key, (0, 0)), (err / max(perr, 1e-6), lerr))
            if not ok:
                bad += 1; print("BAD", d, causal, layout, dt, (B, H, HK, NQ, NK), name(bm, bn, st, e), err, perr, lerr)
    print("check: bad", bad)
    for key, (r, l) in sorted(worst.items()):
        print("worst", key, "err/pytorch-err %.2f" % r, "lse err %.2e" % l)
    return bad

def bench():
    res = []
    tri = replace(select_config(torch.device("cuda")), warp_specialize=False)
    for d, N, causal in itertools.product((64, 128, 256), (1024, 4096, 16384), (False, True)):
        H = 2048 // d; B = 16384 // N
        q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        fl = 4 * B * H * N * N * d / (2 if causal else 1)
        row = dict(d=d, N=N, causal=causal)
        t = lambda f: fl / do_bench(f, warmup=25, rep=120) / 1e9
        for rnd in (0, 1):  # two interleaved rounds
            for bm, bn, st, e in V[d]:
                row.setdefault(name(bm, bn, st, e), []).append(t(lambda: fwd(q, k, v, causal, bm, bn, st, e)))
            row.setdefault("triton", []).append(t(lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", config=tri)))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            row["cudnn"] = t(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            row["flash"] = t(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        print(json.dumps({k_: ([round(x, 1) for x in v_] if isinstance(v_, list) else round(v_, 1) if isinstance(v_, float) else v_) for k_, v_ in row.items()}), flush=True)
        res.append(row)
        json.dump(res, open(f"{OUT}/fwd_ab.json", "w"), indent=1)

if __name__ == "__main__":
    which = sys.argv[1:] or ["check", "bench"]
    if "check" in which: check()
    if "bench" in which: bench()
