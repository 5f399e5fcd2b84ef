"""Attention benchmark: fa2dist (both backward modes) against PyTorch SDPA backends and FlexAttention.

    python benchmarks/bench_attention.py --out benchmarks/results            # full suite (H100: ~6 min)
    python benchmarks/bench_attention.py --head-dims 128 --seqlens 4096 --quick

Shapes follow the FA2 paper's convention: batch x seqlen = 16k tokens, hidden 2048 (nheads = 2048 / headdim).
FLOPs: 4 * batch * nheads * seqlen^2 * headdim for the forward, halved when causal; the backward counts 2.5x the
forward. Times are medians of CUDA-event timings (triton.testing.do_bench) after warm-up. Writes results.json, a
markdown table (also into BENCHMARKS.md with --update-md) and PNG plots.

``--cuda-graphs`` times each step replayed from a CUDA graph: the GPU time of the kernels without the host's launch
path, which dominates short sequences (a few hundred to a few thousand tokens).

``--warm-up-s`` and ``--rounds`` time the GPU under a sustained load, as in training: matmuls first bring it to a
steady clock, then each shape times every provider in each round (the order reversed every other round) and each
cell is the median over rounds. A cold GPU favours whichever provider runs first after a pause.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import fa2dist  # noqa: E402
from fa2dist.configs import select_config  # noqa: E402

TOKENS = 16384
HIDDEN = 2048


def flops(batch, nheads, seqlen, head_dim, causal, mode):
    f = 4 * batch * nheads * seqlen * seqlen * head_dim / (2 if causal else 1)
    return {"fwd": f, "bwd": 2.5 * f, "fwdbwd": 3.5 * f}[mode]


# fa2dist providers: "fa2dist-{det,sp}" plus a suffix that changes the device's config. "-ptr": the pointer-load
# forward instead of tensor descriptors (an A/B of TMA); "-triton": the Triton kernels instead of the
# warp-specialised ones (sm_90), tensor descriptors kept; "-atomic": that, with the sequence-parallel mode's atomic dQ
# (which the Hopper config turns off).
FA2DIST_VARIANTS = {
    "": {},
    "-ptr": dict(tma=False, warp_specialize=False),
    "-triton": dict(warp_specialize=False),
    "-atomic": dict(warp_specialize=False, atomic_dq=True),
}


def make_provider(name, causal):
    """A function (q, k, v) -> out in (batch, nheads, seqlen, headdim) for each provider, or None if unavailable."""
    for mode in ("det", "sp"):
        for suffix, changes in FA2DIST_VARIANTS.items():
            if name == f"fa2dist-{mode}{suffix}":
                cfg = replace(select_config(torch.device("cuda")), **changes) if changes else None
                return lambda q, k, v: fa2dist.flash_attention(
                    q, k, v, causal=causal, layout="bhsd", deterministic=mode == "det", config=cfg
                )
    backends = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
                "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}
    if name in backends:
        backend = backends[name]

        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return run
    if name == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        compiled = torch.compile(flex_attention, dynamic=False)
        cache = {}

        def run(q, k, v):
            key = (q.shape[0], q.shape[1], q.shape[2])
            if causal and key not in cache:
                cache[key] = create_block_mask(
                    lambda b, h, qi, ki: qi >= ki, None, None, q.shape[2], k.shape[2], device=q.device
                )
            return compiled(q, k, v, block_mask=cache.get(key) if causal else None)

        return run
    raise ValueError(f"unknown provider {name!r}")


def bench_one(provider, q, k, v, mode, warmup, rep, cuda_graphs=False):
    fn = provider
    stream = None  # the side stream that warms up and captures a graph (None: a new one)
    if mode == "fwd":
        def step():
            return fn(q, k, v)
    elif mode == "bwd":
        # The forward runs on the stream that captures its backward: autograd runs backward ops on their forward's
        # stream, and cuDNN's SDPA failed its first backward capture in a process when that was another stream.
        stream = torch.cuda.Stream() if cuda_graphs else torch.cuda.current_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = fn(q, k, v)
            do = torch.randn_like(out)
        torch.cuda.current_stream().wait_stream(stream)

        def step():
            return torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    else:
        # No eager forward here: with one (and its graph kept), cuDNN's SDPA failed its first forward+backward
        # graph capture in a process ("operation failed due to a previous error during capture").
        do = torch.randn_like(q)

        def step():
            o = fn(q, k, v)
            return torch.autograd.grad(o, (q, k, v), do)
    if cuda_graphs:
        return _graph_ms(step, rep, stream)
    return triton.testing.do_bench(step, warmup=warmup, rep=rep, return_mode="median")


def _graph_ms(step, rep_ms: float, stream: torch.cuda.Stream | None = None) -> float:
    """Milliseconds per ``step`` replayed from a CUDA graph: one step captured (``_capture``), then replays queued
    back to back and timed in batches; the median batch."""
    graph = _capture(step, stream)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    per_batch = max(1, int(rep_ms / 5 / max(start.elapsed_time(end) / 5, 1e-3)))
    times = []
    for _ in range(5):
        start.record()
        for _ in range(per_batch):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / per_batch)
    del graph
    return sorted(times)[len(times) // 2]


def _capture(step, stream: torch.cuda.Stream | None = None) -> torch.cuda.CUDAGraph:
    """``step`` captured in a CUDA graph, after warm-up on a side stream, as capture requires (``stream``, else a new
    one)."""
    stream = stream or torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    for attempt in range(2):
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                step()
            return graph
        except RuntimeError as err:  # a failed capture is retried once (out of memory is not)
            torch.cuda.synchronize()
            _end_failed_capture()
            if attempt or "out of memory" in str(err):
                raise


def _end_failed_capture() -> None:
    """Capture and drop a one-kernel graph after a failed capture: otherwise the random generators keep the failed
    capture's state, and the next random draw outside a capture fails ("Offset increment outside graph capture
    encountered unexpectedly"), which cost every later cell of the run."""
    x = torch.zeros(1, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x.add_(1)
    del graph


def peak_memory(provider, q, k, v):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = provider(q, k, v)
    torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def sustained_load(seconds: float) -> None:
    """bf16 matmuls for ``seconds``: the GPU's clock and temperature settle where a training run keeps them."""
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    start = time.time()
    while time.time() - start < seconds:
        for _ in range(20):
            x @ x
        torch.cuda.synchronize()


def environment():
    props = torch.cuda.get_device_properties(0)
    try:
        import subprocess
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        driver = "unknown"
    return {"gpu": props.name, "capability": f"{props.major}.{props.minor}", "driver": driver,
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--providers", default="fa2dist-det,fa2dist-sp,sdpa-flash,sdpa-cudnn,sdpa-efficient,flex")
    p.add_argument("--dtypes", default="bf16,fp16")
    p.add_argument("--head-dims", default="64,128,256")
    p.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384")
    p.add_argument("--causal", default="both", choices=["both", "true", "false"])
    p.add_argument("--modes", default="fwd,bwd,fwdbwd")
    p.add_argument("--warmup", type=int, default=25, help="warm-up time in ms")
    p.add_argument("--rep", type=int, default=100, help="timed repetitions in ms")
    p.add_argument("--quick", action="store_true", help="fwd and fwdbwd only, short timings")
    p.add_argument(
        "--cuda-graphs", action="store_true",
        help="time CUDA-graph replays (kernels without host time; 3 warm-up steps, --warmup unused)",
    )
    p.add_argument("--rounds", type=int, default=1,
                   help="time every provider this many times per shape, interleaved; cells are medians")
    p.add_argument("--warm-up-s", type=float, default=0.0,
                   help="seconds of bf16 matmuls before timing, to reach a sustained-load clock")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--update-md", action="store_true", help="write the table into BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.quick:
        args.modes, args.warmup, args.rep = "fwd,fwdbwd", 10, 40

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    causals = {"both": [False, True], "true": [True], "false": [False]}[args.causal]
    env = environment()
    env["timer"] = "CUDA-graph replays" if args.cuda_graphs else "CUDA events around eager calls"
    if args.rounds > 1:
        env["timer"] += f", medians of {args.rounds} interleaved rounds"
    if args.warm_up_s > 0:
        env["timer"] += f" after {args.warm_up_s:g} s of matmuls"
        sustained_load(args.warm_up_s)
    rows = []
    modes = args.modes.split(",")
    for dname in args.dtypes.split(","):
        for d in map(int, args.head_dims.split(",")):
            for n in map(int, args.seqlens.split(",")):
                for causal in causals:
                    batch, nheads = max(TOKENS // n, 1), HIDDEN // d
                    g = torch.Generator(device="cuda").manual_seed(0)
                    q, k, v = (torch.randn(batch, nheads, n, d, device="cuda", dtype=dtypes[dname], generator=g)
                               .requires_grad_() for _ in range(3))
                    meta = {"dtype": dname, "head_dim": d, "seqlen": n, "batch": batch, "nheads": nheads,
                            "causal": causal}
                    for row in time_shape(args, args.providers.split(","), modes, q, k, v, meta):
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                    del q, k, v
                    torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    md = markdown(env, rows, modes)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    plot(rows, args.out)
    if args.update_md:
        update_benchmarks_md(md, os.path.join(os.path.dirname(__file__), "..", "BENCHMARKS.md"))
    print(md)


def time_shape(args, names, modes, q, k, v, meta) -> list[dict]:
    """One row per provider at one shape (``meta``): each mode timed in ``args.rounds`` rounds, the providers'
    order reversed every other round; the cells are medians. A backend that refuses a shape is reported, not fatal."""
    rows = {pname: {"provider": pname, **meta} for pname in names}
    provs = {}
    for r in range(args.rounds):
        for pname in names if r % 2 == 0 else names[::-1]:
            row = rows[pname]
            if "error" in row:
                continue
            try:
                if pname not in provs:
                    provs[pname] = make_provider(pname, meta["causal"])
                for mode in modes:
                    ms = bench_one(provs[pname], q, k, v, mode, args.warmup, args.rep, args.cuda_graphs)
                    row.setdefault(f"{mode}_ms_rounds", []).append(ms)
                    if args.cuda_graphs:  # return each graph's memory pool before the next
                        gc.collect()
                        torch.cuda.empty_cache()
            except Exception as e:
                row["error"] = _error(e)
    shape = (meta["batch"], meta["nheads"], meta["seqlen"], meta["head_dim"], meta["causal"])
    for pname, row in rows.items():
        if "error" in row:
            continue
        try:
            for mode in modes:
                times = sorted(row[f"{mode}_ms_rounds"])
                row[f"{mode}_ms"] = ms = times[len(times) // 2]
                row[f"{mode}_tflops"] = flops(*shape, mode) / ms * 1e-9
            row["peak_mem_mb"] = peak_memory(provs[pname], q, k, v) / 2**20
        except Exception as e:
            row["error"] = _error(e)
    return list(rows.values())


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"


MD_BEGIN, MD_END = "<!-- bench_attention: begin -->", "<!-- bench_attention: end -->"


def update_benchmarks_md(md: str, path: str) -> None:
    """Put the table between BENCHMARKS.md's ``MD_BEGIN`` and ``MD_END`` markers (a new section at the end where the
    file has none); the text around it is left as it is."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{MD_BEGIN}\n{md}{MD_END}"
    if MD_BEGIN in text and MD_END in text:
        head, rest = text.split(MD_BEGIN, 1)
        text = head + block + rest.split(MD_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Latest run of bench_attention.py\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def markdown(env, rows, modes):
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    lines = [f"Card: {env['gpu']} (CC {env['capability']}), driver {env['driver']}, torch {env['torch']}, "
             f"triton {env['triton']}, {env['date']}. TFLOP/s, " + " / ".join(modes) + "; peak MB is fwd+bwd. "
             f"Timer: {env.get('timer', 'CUDA events around eager calls')}.", ""]
    head = "| dtype | d | N | causal | " + " | ".join(providers) + " |"
    lines += [head, "|" + "---|" * (4 + len(providers))]
    keyed = {}
    for r in rows:
        keyed.setdefault((r["dtype"], r["head_dim"], r["seqlen"], r["causal"]), {})[r["provider"]] = r
    for (dt, d, n, c), by in keyed.items():
        cells = []
        for pname in providers:
            r = by.get(pname, {})
            if "error" in r or not r:
                cells.append("—")
            else:
                cells.append(" / ".join(f"{r.get(f'{m}_tflops', 0):.0f}" for m in modes)
                             + f" ({r.get('peak_mem_mb', 0):.0f} MB)")
        lines.append(f"| {dt} | {d} | {n} | {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for mode in ("fwd", "fwdbwd"):
        combos = sorted({(r["dtype"], r["head_dim"], r["causal"]) for r in rows if r["dtype"] == "bf16"})
        if not combos:
            continue
        fig, axes = plt.subplots(1, len(combos), figsize=(4 * len(combos), 3.5), squeeze=False)
        for ax, (dt, d, c) in zip(axes[0], combos):
            for pname in dict.fromkeys(r["provider"] for r in rows):
                pts = [(r["seqlen"], r.get(f"{mode}_tflops")) for r in rows if r["provider"] == pname and
                       r["dtype"] == dt and r["head_dim"] == d and r["causal"] == c and f"{mode}_tflops" in r]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=pname)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{dt} d{d} {'causal' if c else 'full'} {mode}")
            ax.set_xlabel("seqlen")
            ax.set_ylabel("TFLOP/s")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"{mode}.png"), dpi=90)
        plt.close(fig)


if __name__ == "__main__":
    main()
