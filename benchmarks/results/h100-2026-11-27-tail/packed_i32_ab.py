"""Packed sequences' dK/dV kernel storing a sequence's last rows with 32-bit offsets inside the tile (64-bit only for
the tile's first row): against the committed code before (imported as ``fa2dist_old`` from OLD_PATH). Outputs and
gradients compared bitwise, then forward+backward time. bf16, 16384 tokens in 8 documents of seeded random lengths
(``bench_features.doc_lengths``), hidden 2048; eager timings (``triton.testing.do_bench``; CUDA graphs of both
packages' backward ran out of memory), interleaved rounds after 10 s of matmuls.

    python benchmarks/results/h100-2026-11-27-tail/packed_i32_ab.py OLD_PATH ROUNDS OUT.json
"""

import itertools
import json
import os
import statistics
import sys

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
import ab  # noqa: E402
from bench_features import doc_lengths  # noqa: E402

import fa2dist  # noqa: E402

TOKENS = 16384
CELLS = [(128, True, None), (128, True, 512), (128, False, None), (64, True, 512)]  # (d, causal, left window)


def main():
    old = ab.import_copy(sys.argv[1])
    rounds, out_path = int(sys.argv[2]), sys.argv[3]
    lens = doc_lengths(TOKENS, 128, 4096, 0)
    cu = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device="cuda")
    res = {**ab.environment(), "lens": lens, "cells": {}}
    ab.warm_up()
    for d, causal, left in CELLS:
        h = 2048 // d
        g = torch.Generator(device="cuda").manual_seed(d)
        q, k, v, do = (torch.randn(TOKENS, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
        window = (left, 0) if left else (-1, -1)
        steps, results = {}, {}
        for name, mod in (("new", fa2dist), ("old", old)):
            for det in (True, False):
                leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

                def fb(mod=mod, det=det, leaves=leaves):
                    out = mod.flash_attention_varlen(*leaves, cu, cu, max(lens), max(lens), causal=causal,
                                                     window_size=window, deterministic=det)
                    return (out, *torch.autograd.grad(out, leaves, do))

                results[name, det] = fb()
                steps[f"{name}-{'det' if det else 'sp'}"] = fb
        cell = {"bitwise_equal_det": all(torch.equal(x, y) for x, y in zip(results["new", True], results["old", True])),
                "bitwise_equal_sp_out_dk_dv": all(torch.equal(results["new", False][i], results["old", False][i])
                                                  for i in (0, 2, 3))}
        times = ab.interleaved(steps, rounds, graphs=False)
        cell["ms"] = {n: statistics.median(t) for n, t in times.items()}
        cell["new_over_old"] = {m: ab.median_ratio(times, f"new-{m}", f"old-{m}") for m in ("det", "sp")}
        res["cells"][f"d{d} {'causal' if causal else 'full'} window {left}"] = cell
        print(f"d{d} causal={causal} left={left}: {cell['bitwise_equal_det']} {cell['bitwise_equal_sp_out_dk_dv']} "
              f"{cell['new_over_old']}", flush=True)
        json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
