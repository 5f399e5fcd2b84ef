"""Training throughput and model FLOPs utilisation of the small GPT recipe's model on one GPU, with fa2dist's
attention and with PyTorch SDPA on its flash and cuDNN backends.

    python benchmarks/bench_recipe.py --out out/bench_recipe.json
    python benchmarks/bench_recipe.py --impls fa2dist,fa2dist-deterministic,sdpa-flash,sdpa-cudnn --steps 100
    python benchmarks/bench_recipe.py --smoke --device cpu      # tiny model, 2 steps: checks that the script runs
    python benchmarks/bench_recipe.py --compile reduce-overhead  # the model through torch.compile + CUDA graphs

The model is the recipe's (``recipes.common.Transformer`` with ``recipes/gpt/configs/small.yaml``'s sizes, batch
and context length), trained as the recipe trains it: bf16 autocast, the recipe's AdamW and schedule, gradient
clipping at the config's ``gradient_clip_val``. Each implementation gets a fresh model from the same seed and the same
synthetic batches; ``--warmup`` steps (which compile the Triton kernels) are followed by ``--steps`` timed steps of
forward, backward and optimizer step, with ``torch.cuda.synchronize()`` before each timer read.

Model FLOPs per token = 6 x parameters (every weight multiplies each token once forward and twice backward) + the
attention's 3 x 4 x layers x width x seqlen, halved for a causal mask (QK^T and PV, forward once and backward twice).
MFU divides the achieved FLOP/s by ``--peak-tflops``; the achieved TFLOP/s are printed as well, so the numbers can be
judged against another peak. Prints a markdown table; ``--out`` writes it as JSON (and the table next to it as .md).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import platform
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `recipes` is importable from the repository root
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from fa2dist.determinism import resolve_deterministic  # noqa: E402
from recipes.common import COMPILE_MODES, ByteTokenizer, CompiledTraining, Transformer, configure_adamw  # noqa: E402

#: name -> (the Transformer's ``attention``, fa2dist ``deterministic``, SDPA backend or None for torch's choice)
IMPLS: dict[str, tuple[str, bool | None, SDPBackend | None]] = {
    "fa2dist": ("fa2dist", None, None),
    "fa2dist-deterministic": ("fa2dist", True, None),
    "sdpa": ("sdpa", None, None),
    "sdpa-flash": ("sdpa", None, SDPBackend.FLASH_ATTENTION),
    "sdpa-cudnn": ("sdpa", None, SDPBackend.CUDNN_ATTENTION),
}
DEFAULT_IMPLS = "fa2dist,sdpa-flash,sdpa-cudnn"
SMOKE_IMPLS = "fa2dist,sdpa"
# Dense (no sparsity) bf16 tensor-core peak of an H100 SXM from NVIDIA's datasheet; the H200 has the same.
H100_SXM_BF16_TFLOPS = 989.0
# A model small enough for a 2-core CPU to run two steps in a second or two.
SMOKE_MODEL = {"embed_dim": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": None, "mlp_ratio": 4.0, "dropout": 0.0}
SMOKE_DATA = {"block_size": 32, "batch_size": 2}


def recipe_settings(path: Path) -> dict:
    """Model sizes, optimizer settings, context length, batch and clipping from a GPT recipe YAML; fields the YAML
    leaves out take the recipe's defaults (the GPT LightningModule's signature)."""
    from recipes.gpt.train import GPT

    config = yaml.safe_load(path.read_text())
    defaults = {name: p.default for name, p in inspect.signature(GPT.__init__).parameters.items() if name != "self"}
    model = {**defaults, **(config.get("model") or {})}
    data = config.get("data") or {}
    trainer = config.get("trainer") or {}
    return {
        "model": {
            k: model[k] for k in ("embed_dim", "num_layers", "num_heads", "num_kv_heads", "mlp_ratio", "dropout")
        },
        "optim": {k: model[k] for k in ("learning_rate", "weight_decay", "betas", "warmup_steps", "min_lr_ratio")},
        "block_size": int(data.get("block_size", model["block_size"])),
        "batch_size": int(data.get("batch_size", 64)),
        "gradient_clip_val": trainer.get("gradient_clip_val"),
    }


def flops_per_token(model: Transformer, seqlen: int) -> tuple[float, float]:
    """(6 x parameters, attention FLOPs) per trained token; see the module docstring."""
    block = model.blocks[0].attn
    dense = 6.0 * model.num_parameters()
    attention = 3 * 4 * len(model.blocks) * block.num_heads * block.head_dim * seqlen * (0.5 if model.causal else 1.0)
    return dense, float(attention)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(name: str, settings: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """Train a fresh model with implementation ``name`` for warmup + steps steps; timings of the last ``steps``."""
    attention, deterministic, backend = IMPLS[name]
    if args.compile != "none":
        # A fresh trace per implementation: the compiler does not guard on the SDPA backend, and would replay the
        # previous implementation's graph (and keep its CUDA-graph memory pool).
        torch._dynamo.reset()
    tokenizer = ByteTokenizer()
    torch.manual_seed(args.seed)
    model = Transformer(
        tokenizer.vocab_size, causal=True, attention=attention, deterministic=deterministic, **settings["model"]
    ).to(device)
    total_steps = args.warmup + args.steps
    optim = configure_adamw(
        model, total_steps=total_steps, **{**settings["optim"], "betas": tuple(settings["optim"]["betas"])}
    )
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    # --compile: the model's forward and backward through inductor, as the recipes' --model.compile trains them;
    # "reduce-overhead" replays them from CUDA graphs, which removes the per-kernel launch cost (fa2dist's kernels
    # run behind custom ops and are captured too).
    forward = CompiledTraining(model, None if args.compile == "none" else args.compile)
    batch, seqlen = args.batch_size, args.seqlen
    # A few fixed batches of random bytes from a seeded generator, on the device before timing starts.
    g = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, tokenizer.num_bytes, (batch, seqlen + 1), generator=g).to(device) for _ in range(4)]
    clip = settings["gradient_clip_val"]
    backend_ctx = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()

    def step(i: int) -> torch.Tensor:
        tokens = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(tokens[:, :-1]).float()  # the loss in fp32, as the recipe computes it
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    with backend_ctx:
        compile_start = time.perf_counter()
        for i in range(args.warmup):
            losses.append(step(i))
        synchronize(device)
        warmup_s = time.perf_counter() - compile_start
        start = time.perf_counter()
        for i in range(args.warmup, total_steps):
            losses.append(step(i))
        synchronize(device)
        elapsed = time.perf_counter() - start
    losses = torch.stack(losses).float().cpu()
    if not torch.isfinite(losses).all():
        raise FloatingPointError(f"{name}: non-finite loss {losses.tolist()}")

    tokens_per_s = args.steps * batch * seqlen / elapsed
    dense, attn = flops_per_token(model, seqlen)
    tflops = (dense + attn) * tokens_per_s / 1e12
    result = {
        "impl": name,
        "compile": args.compile,
        "attention": attention,
        "sdpa_backend": backend.name if backend is not None else None,
        "fa2dist_deterministic": resolve_deterministic(deterministic)[0] if attention == "fa2dist" else None,
        "steps": args.steps,
        "warmup": args.warmup,
        "warmup_s": warmup_s,
        "step_ms": 1e3 * elapsed / args.steps,
        "tokens_per_s": tokens_per_s,
        "tflops": tflops,
        "mfu": tflops / args.peak_tflops if device.type == "cuda" else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "first_loss": losses[0].item(),
        "last_loss": losses[-1].item(),
    }
    return result


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def markdown_table(results: list[dict]) -> str:
    # Speeds relative to torch's flash backend, or to whichever SDPA row ran.
    ran = {r["impl"]: r for r in results if "error" not in r}
    base_name = next((n for n in ("sdpa-flash", "sdpa", "sdpa-cudnn") if n in ran), None)
    base = ran.get(base_name)
    header = (
        f"| impl | step ms | tokens/s | vs {base_name or 'sdpa'} | TFLOP/s | MFU | peak mem GiB | loss first -> last |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['impl']} | error: {r['error'][:90]} |" + " |" * 6)
            continue
        speedup = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        cells = [
            r["impl"] + (f" ({r['compile']})" if r.get("compile", "none") != "none" else ""),
            f"{r['step_ms']:.2f}",
            f"{r['tokens_per_s']:,.0f}",
            _fmt(speedup, ".2f", "x"),
            f"{r['tflops']:.3g}",
            _fmt(r["mfu"], ".1%"),
            _fmt(r["peak_memory_gib"], ".2f"),
            f"{r['first_loss']:.4f} -> {r['last_loss']:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "recipes/gpt/configs/small.yaml", help="GPT recipe YAML")
    parser.add_argument(
        "--impls", default=None, help=f"comma-separated, of {', '.join(IMPLS)} (default {DEFAULT_IMPLS})"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50; 2 with --smoke)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; 1 with --smoke)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the config's)")
    parser.add_argument("--seqlen", type=int, default=None, help="context length (default: the config's block_size)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_SXM_BF16_TFLOPS,
        help="the GPU's dense bf16 peak for MFU (default 989: H100 SXM; H100 PCIe: 756)",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a tiny model for 2 steps (runs on a CPU in seconds)")
    parser.add_argument(
        "--compile",
        choices=("none", *COMPILE_MODES),
        default="none",
        help="torch.compile the model with this mode (reduce-overhead: CUDA graphs); default: eager",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (and a .md table)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible.")
    impls = [s.strip() for s in (args.impls or (SMOKE_IMPLS if args.smoke else DEFAULT_IMPLS)).split(",") if s.strip()]
    unknown = [s for s in impls if s not in IMPLS]
    if unknown:
        parser.error(f"--impls: unknown {unknown}; choose from {', '.join(IMPLS)}.")
    pinned = [s for s in impls if IMPLS[s][2] is not None]
    if pinned and device.type != "cuda":
        parser.error(f"--impls {','.join(pinned)} pin SDPA's CUDA backends: run them with --device cuda, or use sdpa.")
    settings = recipe_settings(args.config)
    if args.smoke:
        settings["model"] = dict(SMOKE_MODEL)
        settings["block_size"], settings["batch_size"] = SMOKE_DATA["block_size"], SMOKE_DATA["batch_size"]
    args.steps = args.steps if args.steps is not None else (2 if args.smoke else 50)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 10)
    args.batch_size = settings["batch_size"] if args.batch_size is None else args.batch_size
    args.seqlen = settings["block_size"] if args.seqlen is None else args.seqlen
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--seqlen", args.seqlen)):
        if value < 1:
            parser.error(f"{flag} {value}: must be at least 1.")
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup}: must be 0 or more.")
    probe = Transformer(ByteTokenizer().vocab_size, causal=True, **settings["model"])
    block = probe.blocks[0].attn
    dense, attn = flops_per_token(probe, args.seqlen)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "device": str(device),
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton_version,
        "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "smoke": args.smoke,
        "parameters": probe.num_parameters(),
        "layers": len(probe.blocks),
        "width": block.embed_dim,
        "heads": block.num_heads,
        "kv_heads": block.num_kv_heads,
        "head_dim": block.head_dim,
        "seqlen": args.seqlen,
        "batch_size": args.batch_size,
        "tokens_per_step": args.batch_size * args.seqlen,
        "flops_per_token": dense + attn,
        "attention_flops_share": attn / (dense + attn),
        "peak_tflops": args.peak_tflops,
        "precision": "bf16 autocast",
        "compile": args.compile,
    }
    del probe
    print(
        f"{info['gpu']} ({device}), torch {info['torch']}, triton {info['triton']}\n"
        f"model ({info['config']}{', smoke' if args.smoke else ''}): {info['parameters']:,} parameters, "
        f"{info['layers']} layers, width {info['width']}, {info['heads']} heads ({info['kv_heads']} kv) of dim "
        f"{info['head_dim']}; batch {args.batch_size} x seqlen {args.seqlen} = {info['tokens_per_step']:,} tokens/step\n"
        f"{info['flops_per_token'] / 1e6:.1f} MFLOP per token ({100 * info['attention_flops_share']:.1f}% attention); "
        f"{args.warmup} warm-up + {args.steps} timed steps; "
        + (f"MFU against {args.peak_tflops:g} TFLOP/s (--peak-tflops)" if device.type == "cuda" else "no MFU on a CPU"),
        flush=True,
    )

    results = []
    for name in impls:
        try:
            results.append(bench_one(name, settings, args, device))
            r = results[-1]
            print(f"  {name}: {r['step_ms']:.2f} ms/step, {r['tokens_per_s']:,.0f} tokens/s", flush=True)
        except Exception as err:  # one failing backend must not cost the others' numbers
            traceback.print_exc()
            message = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            results.append({"impl": name, "error": message})
            print(f"  {name}: FAILED ({message})", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    table = markdown_table(results)
    print("\n" + table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"info": info, "results": results}, indent=1))
        args.out.with_suffix(".md").write_text(table + "\n")
        print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
