"""Does the last, partly filled wave of query tiles limit the d128 forward without a mask? fa2dist's forward and
cuDNN's at shapes whose 128-row query tiles fill a whole number of waves of the H100's 132 SMs (2112 = 16 x 132,
4224 = 32 x 132) and at the benchmark's shapes (16k tokens, 16 heads: 2048 tiles, 15.5 waves). bf16, d128; forward
TFLOP/s (4 * B * H * N^2 * d), medians over interleaved rounds of CUDA-graph replays after 10 s of matmuls.

    python benchmarks/results/h100-2026-11-27-tail/waves_ab.py ROUNDS OUT.json
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

# (seqlen, batch, heads)
SHAPES = [(4096, 4, 16), (4096, 2, 33), (4096, 6, 11), (4096, 4, 17), (16384, 1, 16), (16384, 1, 33),
          (2048, 8, 16), (2048, 3, 22), (1024, 16, 16), (1024, 4, 33)]


def main():
    rounds, out_path = int(sys.argv[1]), sys.argv[2]
    res = {**ab.environment(), "sms": torch.cuda.get_device_properties(0).multi_processor_count, "cells": {}}
    ab.warm_up()
    for n, b, h in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(n + h)
        q, k, v = (torch.randn(b, h, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))

        def fa():
            with torch.no_grad():
                fa2dist.flash_attention(q, k, v, layout="bhsd")

        def cudnn():
            with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                F.scaled_dot_product_attention(q, k, v)

        times = ab.interleaved({"fa2dist": fa, "cudnn": cudnn}, rounds)
        flops = 4 * b * h * n * n * 128
        cell = {"tiles": b * h * n // 128, "ms": times,
                "tflops": {p: flops / statistics.median(t) / 1e9 for p, t in times.items()},
                "fa2dist_over_cudnn": ab.median_ratio(times, "fa2dist", "cudnn")}
        res["cells"][f"n{n} b{b} h{h}"] = cell
        print(f"n{n} b{b} h{h} tiles {cell['tiles']} ({cell['tiles'] / res['sms']:.2f} waves): "
              f"fa2dist {cell['tflops']['fa2dist']:.0f} cudnn {cell['tflops']['cudnn']:.0f} "
              f"ratio {cell['fa2dist_over_cudnn']:.3f}", flush=True)
        json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
