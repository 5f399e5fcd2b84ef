"""Feature benchmark: variable-length (packed documents) and sliding-window attention, fa2dist against PyTorch.

    python benchmarks/bench_features.py --out benchmarks/results/features      # full suite, one CUDA GPU
    python benchmarks/bench_features.py --head-dims 128 --quick
    python benchmarks/bench_features.py --smoke --device cpu                  # plumbing check, tiny shapes on CPU

Varlen: 16k tokens packed into documents of seeded random lengths (uniform 128..4096, last one trimmed), causal and
not: fa2dist.flash_attention_varlen on (tokens, nheads, headdim), FlexAttention with a document mask on
(1, nheads, tokens, headdim), SDPA (memory-efficient backend) on documents padded to (ndocs, nheads, maxlen, headdim)
with a boolean mask. Sliding window: batch x seqlen = 16k, causal with window_size=(left, 0) (query i sees keys
i-left..i): fa2dist.flash_attention, FlexAttention with a sliding-window mask, and SDPA flash with the full causal mask
as a "no window" baseline (a different, larger function: compare its times, not its TFLOP/s).
bf16, hidden 2048 (nheads = 2048 / headdim). TFLOP/s count only visible (query, key) pairs, counted from each row's
mask: 4 * headdim per pair for the forward, 2.5x that for the backward; padding is not counted. Times are medians of
triton.testing.do_bench (time.perf_counter on CPU, where the forward runs on inputs without grad, as FlexAttention
requires there); peak memory (fwd+bwd, above the inputs) from torch.cuda.max_memory_allocated. max diff: largest
absolute forward difference against FlexAttention (else padded SDPA, else the first provider that ran). Providers
that fail are reported as skipped with the error. Writes features.json and features.md into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import fa2dist  # noqa: E402

REFERENCES = ("flex", "sdpa-efficient-padded")


def doc_lengths(total, lo, hi, seed):
    rng, lens = random.Random(seed), []
    while sum(lens) < total:
        lens.append(rng.randint(lo, hi))
    lens[-1] -= sum(lens) - total
    return lens


def count_visible(mask_mod, n, device, chunk=1024):
    """Exact number of True entries of an n x n mask_mod, evaluated in row chunks."""
    kv, total = torch.arange(n, device=device)[None, :], 0
    for s in range(0, n, chunk):
        qi = torch.arange(s, min(s + chunk, n), device=device)[:, None]
        total += int(mask_mod(0, 0, qi, kv).sum())
    return total


def sdpa_ctx(backend, device):
    return sdpa_kernel(backend) if device == "cuda" else contextlib.nullcontext()


_FLEX = {}


def flex_fn(mask_mod, n, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # A fresh compile per mask: the mask_mods differ only in captured defaults (window, causal), which the compiled
    # kernel would otherwise keep from the first mask.
    torch._dynamo.reset()
    _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    block_mask = create_block_mask(mask_mod, None, None, n, n, device=device)  # built once, outside the timing
    return lambda q, k, v: _FLEX["fn"](q, k, v, block_mask=block_mask)


def leaf(x):
    return x.detach().clone().requires_grad_()


def build_varlen(name, cfg, q, k, v):
    """(inputs, fn, to_packed) for a provider on packed (tokens, nheads, headdim) q/k/v."""
    lens, causal, device = cfg["lens"], cfg["causal"], q.device
    if name in ("fa2dist-det", "fa2dist-sp"):
        det, varlen = name == "fa2dist-det", fa2dist.flash_attention_varlen
        cu = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device=device)
        mx = max(lens)
        return ((leaf(q), leaf(k), leaf(v)),
                lambda q, k, v: varlen(q, k, v, cu, cu, mx, mx, causal=causal, deterministic=det), lambda o: o)
    if name == "flex":
        fn = flex_fn(cfg["mask_mod"], q.shape[0], device)
        return tuple(leaf(x.transpose(0, 1).unsqueeze(0)) for x in (q, k, v)), fn, lambda o: o[0].transpose(0, 1)
    if name == "sdpa-efficient-padded":
        n, lp = len(lens), -(-max(lens) // 16) * 16  # pad to a multiple of 16 (mask alignment)
        starts = [0, *itertools.accumulate(lens)][:-1]

        def pad(x):
            out = x.new_zeros(n, lp, *x.shape[1:])
            for i, (s, ln) in enumerate(zip(starts, lens)):
                out[i, :ln] = x[s:s + ln]
            return leaf(out.transpose(1, 2))

        ar = torch.arange(lp, device=device)
        mask = (ar[None, :] < torch.tensor(lens, device=device)[:, None])[:, None, None, :]  # valid keys
        if causal:  # padded query rows still see the document's keys: no fully masked rows
            mask = mask & (ar[:, None] >= ar[None, :])

        def fn(q, k, v):
            with sdpa_ctx(SDPBackend.EFFICIENT_ATTENTION, device.type):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        def unpad(o):
            return torch.cat([o[i, :, :ln].transpose(0, 1) for i, ln in enumerate(lens)])

        return (pad(q), pad(k), pad(v)), fn, unpad
    raise ValueError(f"unknown provider {name!r}")


def build_window(name, cfg, q, k, v):
    """(inputs, fn, to_bhsd) for a provider on (batch, nheads, seqlen, headdim) q/k/v."""
    left, inputs, ident = cfg["left"], (leaf(q), leaf(k), leaf(v)), (lambda o: o)
    if name in ("fa2dist-det", "fa2dist-sp"):
        det = name == "fa2dist-det"
        return inputs, lambda q, k, v: fa2dist.flash_attention(
            q, k, v, causal=True, window_size=(left, 0), layout="bhsd", deterministic=det), ident
    if name == "flex":
        return inputs, flex_fn(cfg["mask_mod"], q.shape[2], q.device), ident
    if name == "sdpa-flash-causal-nowindow":
        def fn(q, k, v):
            with sdpa_ctx(SDPBackend.FLASH_ATTENTION, q.device.type):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        return inputs, fn, ident
    raise ValueError(f"unknown provider {name!r}")


def timed(step, device, warmup, rep):
    if device == "cuda":
        return triton.testing.do_bench(step, warmup=warmup, rep=rep, return_mode="median")
    step()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def peak_memory(fn, inputs):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn(*inputs)
    torch.autograd.grad(out, inputs, torch.ones_like(out))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def error(e):
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:150]}"


def run_provider(name, cfg, build, base, args, fwd_flops):
    """One row (times, TFLOP/s, peak memory or the reason it was skipped) and the forward output, or None."""
    row = {k: cfg[k] for k in ("feature", "head_dim", "nheads", "shape", "mask", "visible")}
    row["provider"] = name
    try:
        inputs, fn, canon = build(name, cfg, *base)
        fwd_in = inputs if args.device == "cuda" else tuple(x.detach() for x in inputs)
        out = canon(fn(*fwd_in)).detach()  # first call: compiles, warms up, kept for max diff
        row["fwd_ms"] = timed(lambda: fn(*fwd_in), args.device, args.warmup, args.rep)
        row["fwd_tflops"] = fwd_flops / row["fwd_ms"] * 1e-9
    except Exception as e:  # not installed, not implemented yet, unsupported shape: reported, not fatal
        row["skipped"] = error(e)
        return row, None
    try:
        do = torch.randn_like(fn(*inputs))
        row["fwdbwd_ms"] = timed(lambda: torch.autograd.grad(fn(*inputs), inputs, do), args.device, args.warmup,
                                 args.rep)
        row["fwdbwd_tflops"] = 3.5 * fwd_flops / row["fwdbwd_ms"] * 1e-9
        if args.device == "cuda":
            row["peak_mem_mb"] = peak_memory(fn, inputs) / 2**20
    except Exception as e:
        row["skipped_fwdbwd"] = error(e)
    return row, out


def run_config(cfg, build, base, args):
    """Benchmark every provider of one config; returns its rows."""
    rows, outs, fwd_flops = [], {}, 4 * cfg["head_dim"] * cfg["visible"]  # visible counts every head and batch
    for name in cfg["providers"]:
        row, out = run_provider(name, cfg, build, base, args, fwd_flops)
        rows.append(row)
        if out is not None:
            outs[name] = out
    ref = next((p for p in REFERENCES if p in outs), next(iter(outs), None))
    for row in rows:
        if row["provider"] in outs and row["provider"] != ref:
            row["max_diff"] = (outs[row["provider"]].float() - outs[ref].float()).abs().max().item()
            row["diff_vs"] = ref
        print(json.dumps(row), flush=True)
    return rows


def configs(args, d, device):
    """Yield (cfg, build, base tensors) for every benchmark config at head dim d."""
    nheads, fa = args.hidden // d, ["fa2dist-det", "fa2dist-sp"]
    dtype = torch.bfloat16
    g = torch.Generator(device=device).manual_seed(args.seed)
    if "varlen" in args.features:
        lens = doc_lengths(args.tokens, *args.doc_range, args.seed)
        doc = torch.repeat_interleave(torch.arange(len(lens), device=device), torch.tensor(lens, device=device))
        base = tuple(torch.randn(args.tokens, nheads, d, device=device, dtype=dtype, generator=g) for _ in range(3))
        for causal in (False, True):
            def mask_mod(b, h, qi, ki, causal=causal):
                same = doc[qi] == doc[ki]
                return same & (qi >= ki) if causal else same

            visible = count_visible(mask_mod, args.tokens, device)
            assert visible == sum(n * (n + 1) // 2 if causal else n * n for n in lens), "document mask count"
            yield (dict(feature="varlen", head_dim=d, nheads=nheads, lens=lens, causal=causal, mask_mod=mask_mod,
                        visible=visible * nheads, providers=fa + ["flex", "sdpa-efficient-padded"],
                        shape=f"{args.tokens} tok, {len(lens)} docs (max {max(lens)})",
                        mask="causal" if causal else "full"), build_varlen, base)
    if "window" in args.features:
        for n in args.seqlens:
            batch = max(args.tokens // n, 1)
            base = tuple(torch.randn(batch, nheads, n, d, device=device, dtype=dtype, generator=g) for _ in range(3))
            for left in args.lefts:
                def mask_mod(b, h, qi, ki, left=left):
                    return (qi >= ki) & (qi - ki <= left)

                visible = count_visible(mask_mod, n, device)
                assert visible == sum(min(i, left) + 1 for i in range(n)), "window mask count"
                yield (dict(feature="window", head_dim=d, nheads=nheads, left=left, mask_mod=mask_mod,
                            visible=visible * batch * nheads, providers=fa + ["flex"], shape=f"B={batch} N={n}",
                            mask=f"causal, left={left}"), build_window, base)
            yield (dict(feature="window", head_dim=d, nheads=nheads, left=None,
                        visible=batch * nheads * n * (n + 1) // 2, providers=["sdpa-flash-causal-nowindow"],
                        shape=f"B={batch} N={n}", mask="causal, no window (baseline)"), build_window, base)


def environment(device):
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        card = f"{props.name} (CC {props.major}.{props.minor})"
    else:
        card = f"CPU {platform.processor() or platform.machine()}"
    return {"card": card, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "date": datetime.date.today().isoformat()}


def markdown(env, rows, device):
    def f(r, key, fmt):
        return format(r[key], fmt) if key in r else "—"

    lines = [f"Card: {env['card']}, torch {env['torch']}, triton {env['triton']}, {env['date']}. bf16. TFLOP/s count "
             "visible (query, key) pairs only (4*d per pair fwd, 2.5x bwd); peak MB is fwd+bwd above the inputs"
             + ("; on CPU SDPA uses its default backend." if device != "cuda" else "."), "",
             "| feature | d | shape | mask | provider | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | peak MB "
             "| max diff | note |", "|" + "---|" * 12]
    for r in rows:
        note = (f"skipped: {r['skipped']}" if "skipped" in r else
                f"fwd+bwd skipped: {r['skipped_fwdbwd']}" if "skipped_fwdbwd" in r else "")
        diff = f"{r['max_diff']:.2g} vs {r['diff_vs']}" if "max_diff" in r else "—"
        lines.append(f"| {r['feature']} | {r['head_dim']} | {r['shape']} | {r['mask']} | {r['provider']} | "
                     f"{f(r, 'fwd_ms', '.3f')} | {f(r, 'fwd_tflops', '.3g')} | {f(r, 'fwdbwd_ms', '.3f')} | "
                     f"{f(r, 'fwdbwd_tflops', '.3g')} | {f(r, 'peak_mem_mb', '.0f')} | {diff} | "
                     + note.replace("|", "/") + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", default="varlen,window")
    p.add_argument("--head-dims", default="128")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=25, help="warm-up time in ms")
    p.add_argument("--rep", type=int, default=100, help="timed repetitions in ms")
    p.add_argument("--quick", action="store_true", help="short timings, window at seqlen 16k only")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (hidden 128, 512 tokens) to check the plumbing")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    args.features = args.features.split(",")
    args.tokens, args.hidden, args.doc_range = 16384, 2048, (128, 4096)
    args.seqlens, args.lefts = [4096, 8192, 16384], [256, 1024]
    if args.quick:
        args.warmup, args.rep, args.seqlens = 10, 40, [16384]
    if args.smoke:
        args.tokens, args.hidden, args.doc_range, args.seqlens, args.lefts = 512, 128, (16, 160), [128, 256], [16, 64]
        if args.head_dims == "128":
            args.head_dims = "32"
    for attr in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):  # one compile per shape
        if hasattr(torch._dynamo.config, attr):
            setattr(torch._dynamo.config, attr, max(getattr(torch._dynamo.config, attr), 256))
    env = environment(args.device)
    rows = []
    for d in map(int, args.head_dims.split(",")):
        for cfg, build, base in configs(args, d, args.device):
            rows += run_config(cfg, build, base, args)
            if args.device == "cuda":
                torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "features.json"), "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    md = markdown(env, rows, args.device)
    with open(os.path.join(args.out, "features.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
