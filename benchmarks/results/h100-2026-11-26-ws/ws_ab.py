"""Kept as run (H100, 2026-11-26): correctness scan and forward timings of two kernel versions side by side,
"v1" (the first version without ping-pong, in ../h200-2026-11-26-ws/kernel_versions.patch) and "v2" (the shipped
kernel at that commit), imported as modules hopper_v1 / hopper_v2 from a scratch folder. Not maintained."""
import json, math, os, sys, itertools
import torch, triton
import torch.nn.functional as F
from dataclasses import replace
from triton.testing import do_bench
sys.path.insert(0, os.getcwd()); sys.path.append(os.path.join(os.getcwd(), "ab_old"))
import hopper_v1, hopper_v2
import fa2dist
from fa2dist.configs import select_config
from ws_bench import desc, ref
OUT = os.environ.get("OUT", ".")

def fwd(mod, q, k, v, causal, bm, bn, st, layout="bhsd"):
    if layout == "bshd":
        B, NQ, H, D = q.shape; NK = k.shape[1]; HK = k.shape[2]
    else:
        B, H, NQ, D = q.shape; NK = k.shape[2]; HK = k.shape[1]
    o = torch.empty_like(q); lse = torch.empty(B, H, NQ, device=q.device, dtype=torch.float32)
    qrows = bm if mod is hopper_v1 else 64
    mod.attn_fwd_ws_kernel[(triton.cdiv(NQ, bm), B * H)](
        desc(q, layout, qrows), desc(k, layout, bn), desc(v, layout, bn), desc(o, layout, 64), lse, 1 / math.sqrt(D),
        lse.stride(0), lse.stride(1), H, H // HK, NQ, NK, BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=D, STAGES=st, CAUSAL=causal, num_warps=4)
    return o, lse

V = {64: [("v1", 128, 128, 3), ("v2", 128, 128, 3), ("v2", 192, 64, 4), ("v2", 192, 64, 3), ("v2", 192, 128, 3)],
     128: [("v1", 128, 128, 3), ("v2", 128, 128, 3)]}
MODS = {"v1": hopper_v1, "v2": hopper_v2}

def check():
    torch.manual_seed(1); bad = 0; worst = 0
    shapes = [(2, 4, 4, 1000, 1000), (1, 3, 3, 333, 517), (1, 8, 2, 777, 777), (1, 2, 2, 300, 64), (1, 4, 4, 1, 77), (1, 2, 1, 129, 1031)]
    for d, causal, layout, (B, H, HK, NQ, NK) in itertools.product((64, 128), (False, True), ("bhsd", "bshd"), shapes):
        mk = (lambda h, n: torch.randn(B, n, h, d, device="cuda", dtype=torch.bfloat16)) if layout == "bshd" else (lambda h, n: torch.randn(B, h, n, d, device="cuda", dtype=torch.bfloat16))
        q, k, v = mk(H, NQ), mk(HK, NK), mk(HK, NK)
        ro, rlse = ref(q, k, v, causal, layout)
        qq, kk, vv = (t.transpose(1, 2) if layout == "bshd" else t for t in (q, k, v))
        po = F.scaled_dot_product_attention(qq, kk.repeat_interleave(H // HK, 1), vv.repeat_interleave(H // HK, 1),
                                            attn_mask=(torch.ones(NQ, NK, device="cuda", dtype=torch.bool).tril(NK - NQ) if causal else None))
        if layout == "bshd": po = po.transpose(1, 2)
        perr = (po.double() - ro).abs().nan_to_num(0).max().item()
        for name, bm, bn, st in V[d]:
            if name == "v1": continue
            o, lse = fwd(MODS[name], q, k, v, causal, bm, bn, st, layout)
            err = (o.double() - ro).abs().nan_to_num(1e9).max().item()
            fin = torch.isfinite(rlse)
            lerr = (lse.double() - rlse)[fin].abs().max().item() if fin.any() else 0
            ok = err <= 2 * perr + 1e-5 and lerr < 1e-4 and bool((lse[~fin] == float("inf")).all())
            worst = max(worst, err / max(perr, 1e-6))
            if not ok:
                bad += 1; print("BAD", d, causal, layout, (B, H, HK, NQ, NK), name, bm, bn, st, err, perr, lerr)
    print("check v2: bad", bad, "worst ratio", worst)

def bench():
    res = []
    tri = replace(select_config(torch.device("cuda")), warp_specialize=False)
    for d, N, causal in itertools.product((64, 128), (1024, 4096, 16384), (False, True)):
        H = 2048 // d; B = 16384 // N
        q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        fl = 4 * B * H * N * N * d / (2 if causal else 1)
        row = dict(d=d, N=N, causal=causal)
        for name, bm, bn, st in V[d]:
            row[f"{name}_{bm}_{bn}_{st}"] = fl / do_bench(lambda: fwd(MODS[name], q, k, v, causal, bm, bn, st), warmup=50, rep=250) / 1e9
        row["triton"] = fl / do_bench(lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd", config=tri), warmup=50, rep=250) / 1e9
        from torch.nn.attention import sdpa_kernel, SDPBackend
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            row["cudnn"] = fl / do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), warmup=50, rep=250) / 1e9
        print(json.dumps({k_: (round(v_, 1) if isinstance(v_, float) else v_) for k_, v_ in row.items()}), flush=True)
        res.append(row)
    json.dump(res, open(f"{OUT}/ws_ab.json", "w"), indent=1)

if __name__ == "__main__":
    check(); bench()
