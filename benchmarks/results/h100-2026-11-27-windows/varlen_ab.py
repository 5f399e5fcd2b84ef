"""Packed sequences (variable length) on the H100: the Gluon (Hopper) kernels against the Triton kernels they replace
there, and FlexAttention with a document mask. bf16, 16384 tokens in documents of seeded random lengths (128..4096,
seed 0: `bench_features.doc_lengths`, 8 documents), hidden 2048, head dims 64 and 128, causal and not.

    python benchmarks/results/h100-2026-11-27-windows/varlen_ab.py ROUNDS OUT.json

Providers and method as `window_ab.py` (gluon-det/sp: the default config; triton-det/sp: warp_specialize=False;
CUDA-graph replays, medians of interleaved rounds after 10 s of matmuls). TFLOP/s count the visible pairs of every
document: 4 * d per pair forward, 3.5x that forward+backward.
"""

import dataclasses
import itertools
import json
import os
import statistics
import sys
import time

import torch
import triton

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
from bench_attention import _graph_ms  # noqa: E402
from bench_features import doc_lengths  # noqa: E402

import fa2dist  # noqa: E402
from fa2dist import configs  # noqa: E402

TOKENS = 16384


def flex_fn(doc, causal):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q, k):
        same = doc[q] == doc[k]
        return same & (q >= k) if causal else same

    torch._dynamo.reset()
    fn = torch.compile(flex_attention, dynamic=False)
    block_mask = create_block_mask(mask_mod, None, None, TOKENS, TOKENS, device="cuda")
    return lambda q, k, v: fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                              block_mask=block_mask)[0].transpose(0, 1)


def main():
    rounds, out_path = int(sys.argv[1]), sys.argv[2]
    triton_cfg = dataclasses.replace(configs.DEFAULT_CONFIGS[torch.cuda.get_device_capability()],
                                     warp_specialize=False)
    lens = doc_lengths(TOKENS, 128, 4096, 0)
    cu = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device="cuda")
    doc = torch.repeat_interleave(torch.arange(len(lens), device="cuda"), torch.tensor(lens, device="cuda"))
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d"), "lens": lens, "cells": {}}
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.time() + 10
    while time.time() < end:
        a @ a
    torch.cuda.synchronize()
    for d, causal in ((128, False), (128, True), (64, False), (64, True)):
        h = 2048 // d
        g = torch.Generator(device="cuda").manual_seed(d)
        q, k, v, do = (torch.randn(TOKENS, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
        pairs = sum(n * (n + 1) // 2 if causal else n * n for n in lens)
        fwd_flops = 4 * d * pairs * h
        fns = {}
        for name in ("gluon-det", "gluon-sp", "triton-det", "triton-sp"):
            cfg = None if name.startswith("gluon") else triton_cfg
            det = name.endswith("det")
            fns[name] = (lambda q, k, v, cfg=cfg, det=det, causal=causal: fa2dist.flash_attention_varlen(
                q, k, v, cu, cu, max(lens), max(lens), causal=causal, deterministic=det, config=cfg))
        fns["flex"] = flex_fn(doc, causal)
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        outs = {name: fn(*leaves).detach().float() for name, fn in fns.items()}
        cell = {name: {"fwd_ms": [], "fb_ms": [],
                       "max_diff_vs_triton_det": (o - outs["triton-det"]).abs().max().item()}
                for name, o in outs.items()}
        for r in range(rounds):
            for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                fn = fns[name]

                def fwd(fn=fn, x=(q, k, v)):
                    with torch.no_grad():
                        fn(*x)

                def fb(fn=fn, leaves=leaves, do=do):
                    torch.autograd.grad(fn(*leaves), leaves, do)

                for key, step in (("fwd_ms", fwd), ("fb_ms", fb)):
                    try:
                        cell[name][key].append(_graph_ms(step, 150))
                    except RuntimeError as err:  # a provider that cannot be captured is timed eagerly
                        cell[name]["eager"] = str(err).splitlines()[0][:200]
                        cell[name][key].append(triton.testing.do_bench(step, warmup=25, rep=100,
                                                                       return_mode="median"))
        for c in cell.values():
            c["fwd_tflops"] = fwd_flops / statistics.median(c["fwd_ms"]) / 1e9
            c["fb_tflops"] = 3.5 * fwd_flops / statistics.median(c["fb_ms"]) / 1e9
        res["cells"][f"d{d} {'causal' if causal else 'full'}"] = cell
        print(f"d{d} causal={causal}: " + "  ".join(
            f"{n} {c['fwd_tflops']:.0f}/{c['fb_tflops']:.0f}" for n, c in cell.items()), flush=True)
        json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
