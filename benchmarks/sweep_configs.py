"""Sweep forward and backward tiles on the current GPU (bf16, 16k tokens, hidden 2048) and print the fastest
correct config per head dim: the numbers behind the registry entries in fa2dist/configs.py.

    python benchmarks/sweep_configs.py --head-dims 64,128,256 --seqlens 4096,16384
"""

from __future__ import annotations

import argparse
import json

import torch
import triton

import fa2dist
from fa2dist.configs import BackwardConfig, BlockConfig, KernelsConfig
from fa2dist.ops.reference import attention_reference

TMA = False  # --tma: the forward loads tiles with tensor descriptors (sm_90+)
KINDS = ("fwd", "bwd")  # --only


def cfg_with(fwd: BlockConfig, bwd: BackwardConfig, head_dim: int) -> KernelsConfig:
    # One tier ending at the swept head dim: select_config fits tiles to the widest head dim of their tier, so a
    # tier up to 256 would shrink tiles that fit at this head dim.
    d = max(head_dim, 16)
    return KernelsConfig("sweep", ((d, fwd),), ((d, bwd),), ((d, bwd),), max_headdim=d, tma=TMA)


FWD_CANDIDATES = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 4, 3), (128, 128, 8, 2),
                  (64, 64, 4, 3), (128, 64, 4, 4), (128, 32, 4, 3), (64, 128, 4, 3)]
DKDV_CANDIDATES = [(64, 128, 8, 2), (64, 128, 4, 2), (32, 128, 4, 3), (64, 64, 4, 3), (32, 64, 4, 2), (64, 128, 8, 3),
                   (32, 128, 8, 2)]


def _time(fn) -> float:
    return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median")


def sweep_shape(d: int, n: int, causal: bool) -> list[dict]:
    results = []
    batch, nheads = max(16384 // n, 1), 2048 // d
    q, k, v = (torch.randn(batch, n, nheads, d, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3))
    do = torch.randn_like(q)
    f = 4 * batch * nheads * n * n * d / (2 if causal else 1)
    ref = attention_reference(*(t[:1].transpose(1, 2).float() for t in (q, k, v)), causal=causal)[0].transpose(1, 2)
    best: dict = {}
    if "fwd" not in KINDS:
        best["fwd"] = (0.0, BlockConfig(*FWD_CANDIDATES[0]))
    for m_, n_, w, s in FWD_CANDIDATES if "fwd" in KINDS else ():
        c = BlockConfig(m_, n_, w, s)
        cfg = cfg_with(c, BackwardConfig(BlockConfig(*DKDV_CANDIDATES[0]), BlockConfig(*DKDV_CANDIDATES[0])), d)
        try:
            out = fa2dist.flash_attention(q, k, v, causal=causal, config=cfg)
            if (out[:1].float() - ref).abs().max().item() > 3e-2:
                print("WRONG fwd", d, n, causal, c, flush=True)
                continue
            ms = _time(lambda cfg=cfg: fa2dist.flash_attention(q, k, v, causal=causal, config=cfg))
        except Exception as e:
            print("fail fwd", c, type(e).__name__, str(e)[:100], flush=True)
            continue
        tf = f / ms * 1e-9
        results.append({"kind": "fwd", "d": d, "n": n, "causal": causal, "cfg": repr(c), "tflops": tf})
        if tf > best.get("fwd", (0,))[0]:
            best["fwd"] = (tf, c)
    fbest = best["fwd"][1]
    for det in (True, False) if "bwd" in KINDS else ():
        for m_, n_, w, s in DKDV_CANDIDATES:
            c = BlockConfig(m_, n_, w, s)
            dq = BlockConfig(n_, m_, w, s)
            cfg = cfg_with(fbest, BackwardConfig(c, dq), d)
            try:
                out = fa2dist.flash_attention(q, k, v, causal=causal, config=cfg, deterministic=det)
                ms = _time(lambda out=out: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
            except Exception as e:
                print("fail bwd", c, type(e).__name__, str(e)[:100], flush=True)
                continue
            tf = 2.5 * f / ms * 1e-9
            key = "det" if det else "sp"
            results.append({"kind": key, "d": d, "n": n, "causal": causal, "cfg": repr(c), "tflops": tf})
            if tf > best.get(key, (0,))[0]:
                best[key] = (tf, c)
    print(f"d{d} N{n} causal={causal}: " + "; ".join(f"{k}: {v[0]:.0f} TF/s {v[1]}" for k, v in best.items()),
          flush=True)
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--head-dims", default="64,128,256")
    p.add_argument("--seqlens", default="4096,16384")
    p.add_argument("--fwd", default=None, help="forward candidates 'm,n,warps,stages;...' (default: built-in list)")
    p.add_argument("--dkdv", default=None, help="dK/dV candidates 'm,n,warps,stages;...' (default: built-in list)")
    p.add_argument("--tma", action="store_true", help="forward with tensor-descriptor loads (sm_90+)")
    p.add_argument("--only", choices=["fwd", "bwd"], default=None, help="sweep only the forward or the backward")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    global FWD_CANDIDATES, DKDV_CANDIDATES, TMA, KINDS
    TMA = args.tma
    KINDS = (args.only,) if args.only else ("fwd", "bwd")
    if args.fwd:
        FWD_CANDIDATES = [tuple(map(int, c.split(","))) for c in args.fwd.split(";")]
    if args.dkdv:
        DKDV_CANDIDATES = [tuple(map(int, c.split(","))) for c in args.dkdv.split(";")]
    results = []
    for d in map(int, args.head_dims.split(",")):
        for n in map(int, args.seqlens.split(",")):
            for causal in (False, True):
                results += sweep_shape(d, n, causal)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
