"""The dense (window-free) calls before and after the Gluon kernels took windows: outputs and gradients bitwise
equal (the deterministic mode's all, the sequence-parallel mode's output, dK and dV: its dQ is added in no fixed
order where the dK/dV kernel adds it), and kernel time (ROUNDS 0: the check alone). The committed package before
the change is imported as ``fa2dist_old`` (a copy with the name replaced, on the path given as the first argument).
bf16, 16k tokens, hidden 2048; CUDA-graph replays, both packages interleaved in each round (order reversed every other
round), after 10 s of matmuls.

    python benchmarks/results/h100-2026-11-27-windows/dense_ab.py OLD_PATH ROUNDS OUT.json
"""

import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks"), sys.argv[1]]
import fa2dist_old  # noqa: E402
from bench_attention import _graph_ms  # noqa: E402

import fa2dist  # noqa: E402

CELLS = [(64, 1024, False), (64, 1024, True), (64, 4096, True), (128, 1024, False), (128, 4096, False),
         (128, 4096, True), (128, 16384, False), (128, 16384, True), (256, 4096, True)]


def main():
    rounds, out_path = int(sys.argv[2]), sys.argv[3]
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.time() + 10
    while time.time() < end:
        a @ a
    torch.cuda.synchronize()
    res = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "cells": {}}
    for d, n, causal in CELLS:
        h, b = 2048 // d, 16384 // n
        g = torch.Generator(device="cuda").manual_seed(n + d)
        q, k, v, do = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
        flops = 4 * b * h * n * n * d / (2 if causal else 1)
        cell = {}
        grads = {}
        for name, mod in (("new", fa2dist), ("old", fa2dist_old)):
            for det in (True, False):
                leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
                out = mod.flash_attention(*leaves, causal=causal, deterministic=det)
                grads[name, det] = (out, *torch.autograd.grad(out, leaves, do))
        cell["bitwise_equal_det"] = all(torch.equal(x, y) for x, y in zip(grads["new", True], grads["old", True]))
        cell["bitwise_equal_sp_out_dk_dv"] = all(
            torch.equal(grads["new", False][i], grads["old", False][i]) for i in (0, 2, 3))
        if not rounds:
            print(f"d{d} n{n} causal={causal} {cell}", flush=True)
            res["cells"][f"d{d} n{n} {'causal' if causal else 'full'}"] = cell
            json.dump(res, open(out_path, "w"), indent=1)
            continue
        times = {f"{name}-{m}": [] for name in ("new", "old") for m in ("fwd", "det", "sp")}
        for r in range(rounds):
            for name, mod in ((("new", fa2dist), ("old", fa2dist_old)) if r % 2 == 0 else
                              (("old", fa2dist_old), ("new", fa2dist))):
                leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

                def fwd(mod=mod, x=(q, k, v), causal=causal):
                    with torch.no_grad():
                        mod.flash_attention(*x, causal=causal)

                def fb(mod=mod, det=True, leaves=leaves, causal=causal, do=do):
                    out = mod.flash_attention(*leaves, causal=causal, deterministic=det)
                    torch.autograd.grad(out, leaves, do)

                times[f"{name}-fwd"].append(_graph_ms(fwd, 150))
                times[f"{name}-det"].append(_graph_ms(fb, 150))
                times[f"{name}-sp"].append(_graph_ms(lambda fb=fb: fb(det=False), 150))
        for key, ts in times.items():
            scale = 1 if key.endswith("fwd") else 3.5
            cell[key] = {"ms": ts, "tflops": scale * flops / statistics.median(ts) / 1e9}
        for m in ("fwd", "det", "sp"):
            cell[f"ratio-{m}"] = statistics.median(o / nw for o, nw in zip(times[f"old-{m}"], times[f"new-{m}"]))
        res["cells"][f"d{d} n{n} {'causal' if causal else 'full'}"] = cell
        print(f"d{d} n{n} causal={causal} bitwise={cell['bitwise_equal_det']} " + " ".join(
            f"{m} new/old {cell[f'ratio-{m}']:.3f} ({cell[f'new-{m}']['tflops']:.0f})" for m in ("fwd", "det", "sp")),
            flush=True)
        json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
