"""The d128 forward without a mask with its tail split by keys (``hopper.WS_SPLIT_TAIL``) against the same kernel
running whole tiles in its last round, and cuDNN. bf16, 16k tokens, hidden 2048 (2048 query tiles of 128 rows: 15.5
rounds of 132 programs), and one shape whose tiles fill whole rounds (33 heads); forward TFLOP/s (4 * B * H * N^2 *
d) and forward+backward in the deterministic mode (3.5x). Each step's CUDA graph captured once, then ROUNDS rounds
of 20 ms batches of replays alternating between steps (``ab.replays_interleaved``), after 10 s of matmuls; medians
over rounds, ratios medians of per-round ratios. Before timing: the split output against whole tiles
(max abs difference) and bitwise over two runs.

    python benchmarks/results/h100-2026-11-27-tail/split_ab.py ROUNDS OUT.json
"""

import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
import ab  # noqa: E402

import fa2dist  # noqa: E402
from fa2dist.ops import attention  # noqa: E402

SHAPES = [(4096, 4, 16), (8192, 2, 16), (16384, 1, 16), (4096, 2, 33)]  # (seqlen, batch, heads)


def main():
    rounds, out_path = int(sys.argv[1]), sys.argv[2]
    res = {**ab.environment(), "cells": {}}
    split_tail = attention.ws_split_tail
    ab.warm_up()
    for n, b, h in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(n + h)
        q, k, v, do = (torch.randn(b, h, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

        def with_split(split, fn):
            def step():
                attention.ws_split_tail = split_tail if split else (lambda *a: False)
                try:
                    return fn()
                finally:
                    attention.ws_split_tail = split_tail
            return step

        def fwd():
            with torch.no_grad():
                return fa2dist.flash_attention(q, k, v, layout="bhsd", return_lse=True)

        def fb():
            out = fa2dist.flash_attention(*leaves, layout="bhsd", deterministic=True)
            return torch.autograd.grad(out, leaves, do)

        def cudnn():
            with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                F.scaled_dot_product_attention(q, k, v)

        (o1, l1), (o2, l2), (ow, lw) = with_split(True, fwd)(), with_split(True, fwd)(), with_split(False, fwd)()
        cell = {"tiles": b * h * n // 128, "bitwise_repeat": torch.equal(o1, o2) and torch.equal(l1, l2),
                "max_diff_out_vs_whole": (o1.float() - ow.float()).abs().max().item(),
                "max_diff_lse_vs_whole": (l1 - lw).abs().max().item()}
        del o1, o2, ow, l1, l2, lw
        steps = {"split": with_split(True, fwd), "whole": with_split(False, fwd), "cudnn": cudnn,
                 "split-fb": with_split(True, fb), "whole-fb": with_split(False, fb)}
        times = ab.replays_interleaved(steps, rounds)
        flops = 4 * b * h * n * n * 128
        cell["tflops"] = {p: flops * (3.5 if p.endswith("-fb") else 1) / statistics.median(t) / 1e9
                          for p, t in times.items()}
        cell["split_over_whole"] = ab.median_ratio(times, "split", "whole")
        cell["split_over_cudnn"] = ab.median_ratio(times, "split", "cudnn")
        cell["whole_over_cudnn"] = ab.median_ratio(times, "whole", "cudnn")
        cell["fb_split_over_whole"] = ab.median_ratio(times, "split-fb", "whole-fb")
        cell["ms"] = times
        res["cells"][f"n{n} b{b} h{h}"] = cell
        print(f"n{n} b{b} h{h}: " + " ".join(f"{p} {t:.0f}" for p, t in cell["tflops"].items())
              + f" | split/whole {cell['split_over_whole']:.3f} split/cudnn {cell['split_over_cudnn']:.3f}"
              f" whole/cudnn {cell['whole_over_cudnn']:.3f} fb {cell['fb_split_over_whole']:.3f}"
              f" | bitwise {cell['bitwise_repeat']} diff {cell['max_diff_out_vs_whole']:.2e}", flush=True)
        json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
