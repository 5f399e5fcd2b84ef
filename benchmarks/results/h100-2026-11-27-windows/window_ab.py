"""Sliding windows on the H100: the Gluon (Hopper) kernels against the Triton kernels they replace there, and
FlexAttention. bf16, batch x seqlen = 16k (one sequence of 16384), hidden 2048, causal windows window_size=(left, 0).

    python benchmarks/results/h100-2026-11-27-windows/window_ab.py ROUNDS OUT.json

Providers: gluon-det / gluon-sp (the default config: the Gluon kernels, deterministic and sequence-parallel),
triton-det / triton-sp (the same config with warp_specialize=False: the Triton kernels, as before windows ran on the
Gluon kernels), flex (torch.compile'd flex_attention with a sliding-window block mask; d128 at 256 and 1024 and d64
at 256 only, to bound compile time). Each round times every provider of a shape in turn (order reversed every other
round), forward and forward+backward, as CUDA-graph replays (``_graph_ms`` of benchmarks/bench_attention.py; eager
timings of the small windows measure the host), after 10 s of matmuls. TFLOP/s count
visible (query, key) pairs: 4 * d per pair forward, 3.5x that forward+backward.
"""

import dataclasses
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

import fa2dist  # noqa: E402
from fa2dist import configs  # noqa: E402

N = 16384
SHAPES = [(128, 128), (128, 256), (128, 512), (128, 1024), (128, 4096), (64, 256), (64, 1024), (64, 4096)]
FLEX = {(128, 256), (128, 1024), (64, 256)}


def warm(seconds=10.0):
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def flex_fn(left):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q, k):
        return (k <= q) & (q - k <= left)

    torch._dynamo.reset()
    fn = torch.compile(flex_attention, dynamic=False)
    block_mask = create_block_mask(mask_mod, None, None, N, N, device="cuda")
    return lambda q, k, v: fn(q, k, v, block_mask=block_mask)


def main():
    rounds, out_path = int(sys.argv[1]), sys.argv[2]
    cap = torch.cuda.get_device_capability()
    triton_cfg = dataclasses.replace(configs.DEFAULT_CONFIGS[cap], warp_specialize=False)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "date": time.strftime("%Y-%m-%d"), "cells": {}}
    warm()
    for d, left in SHAPES:
        h = 2048 // d
        g = torch.Generator(device="cuda").manual_seed(d + left)
        q, k, v, do = (torch.randn(1, h, N, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
        pairs = sum(min(i, left) + 1 for i in range(N))
        fwd_flops = 4 * d * pairs * h
        fns = {}
        for name in ("gluon-det", "gluon-sp", "triton-det", "triton-sp"):
            cfg = None if name.startswith("gluon") else triton_cfg
            det = name.endswith("det")
            fns[name] = (lambda q, k, v, cfg=cfg, det=det, left=left: fa2dist.flash_attention(
                q, k, v, window_size=(left, 0), layout="bhsd", deterministic=det, config=cfg))
        if (d, left) in FLEX:
            fns["flex"] = flex_fn(left)
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        outs = {}
        for name, fn in fns.items():
            outs[name] = fn(*leaves).detach().float()
        ref = outs["triton-det"]
        diffs = {name: (o - ref).abs().max().item() for name, o in outs.items()}
        cell = {name: {"fwd_ms": [], "fb_ms": []} for name in fns}
        for r in range(rounds):
            order = list(fns) if r % 2 == 0 else list(fns)[::-1]
            for name in order:
                fn = fns[name]

                def fwd(fn=fn, x=(q, k, v)):
                    with torch.no_grad():
                        fn(*x)

                def fb(fn=fn, leaves=leaves, do=do):
                    out = fn(*leaves)
                    torch.autograd.grad(out, leaves, do)

                for key, step in (("fwd_ms", fwd), ("fb_ms", fb)):
                    try:
                        cell[name][key].append(_graph_ms(step, 150))
                    except RuntimeError as err:  # a provider that cannot be captured is timed eagerly
                        cell[name]["eager"] = str(err).splitlines()[0][:200]
                        cell[name][key].append(triton.testing.do_bench(step, warmup=25, rep=100,
                                                                       return_mode="median"))
        for name, c in cell.items():
            c["fwd_tflops"] = fwd_flops / statistics.median(c["fwd_ms"]) / 1e9
            c["fb_tflops"] = 3.5 * fwd_flops / statistics.median(c["fb_ms"]) / 1e9
            c["max_diff_vs_triton_det"] = diffs[name]
        results["cells"][f"d{d} left {left}"] = cell
        print(f"d{d} left={left}: " + "  ".join(
            f"{n} {c['fwd_tflops']:.0f}/{c['fb_tflops']:.0f}" for n, c in cell.items()), flush=True)
        json.dump(results, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
