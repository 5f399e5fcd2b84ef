"""``python -m fa2dist info | check-determinism`` (also installed as the ``fa2dist`` command).

    python -m fa2dist info                       # versions, GPUs and their configs, deterministic switch
    python -m fa2dist info --json
    python -m fa2dist check-determinism          # on a new node: is the deterministic backward bitwise reproducible?
    python -m fa2dist check-determinism --shapes 4x4096x32x128/8 --runs 10 --dtype fp16

Benchmarks live in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fa2dist import diagnostics
from fa2dist.diagnostics import DTYPES, MODES, AttentionShape


def _shape(text: str) -> AttentionShape:
    try:
        return AttentionShape.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _head_dims(text: str) -> list[int]:
    try:
        dims = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        dims = []
    if not dims:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of head dims, e.g. 64,128,256.")
    return dims


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fa2dist", description="fa2dist diagnostics. Benchmarks live in benchmarks/."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{info,check-determinism}")

    info = sub.add_parser("info", help="versions, visible GPUs with the config each runs, the deterministic switch")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument(
        "--head-dims",
        type=_head_dims,
        default=[64, 128, 256],
        metavar="D,D,...",
        help="head dims whose tiles to show (default: 64,128,256)",
    )

    check = sub.add_parser(
        "check-determinism",
        help="run forward+backward several times and compare the gradients bitwise, per backward mode",
        description="Runs forward+backward on the same random inputs several times per shape, causal setting and "
        "backward mode, on this machine's GPU with its config (or the CPU: Triton's interpreter under "
        "TRITON_INTERPRET=1, else the PyTorch path), and reports whether out/dq/dk/dv are bitwise equal across runs. "
        "Exits with 1 if the deterministic mode was not bitwise equal.",
    )
    check.add_argument(
        "--shapes",
        type=_shape,
        nargs="+",
        default=None,
        metavar="BxSxHxD[/Hkv]",
        help="problems to run, e.g. 2x1024x16x128 or 2x1024x16x128/4 (GQA); default: a few awkward sizes "
        "(tiny ones on the CPU)",
    )
    check.add_argument("--runs", type=int, default=5, help="passes per case, at least 2 (default: 5)")
    check.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input dtype (default: bf16)")
    check.add_argument(
        "--device", default=None, help="e.g. cuda:1 or cpu (default: the current CUDA device, else the CPU)"
    )
    check.add_argument(
        "--causal", choices=("both", "yes", "no"), default="both", help="which masks to run (default: both)"
    )
    check.add_argument(
        "--mode", choices=("both", *MODES), default="both", help="which backward modes to run (default: both)"
    )
    check.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0, or 1 when check-determinism fails, 2 for bad arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        info = diagnostics.collect_info(args.head_dims)
        print(json.dumps(info, indent=2) if args.json else diagnostics.format_info(info))
        return 0

    if args.runs < 2:
        parser.error(f"--runs {args.runs}: comparing runs needs at least 2.")
    causal = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    modes = diagnostics.MODES if args.mode == "both" else (args.mode,)
    try:
        report = diagnostics.check_determinism(
            shapes=args.shapes,
            runs=args.runs,
            dtype=args.dtype,
            device=args.device,
            causal=causal,
            modes=modes,
            seed=args.seed,
        )
    except (ValueError, RuntimeError) as err:
        print(f"check-determinism: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else diagnostics.format_report(report))
    if not report.cases("deterministic"):
        return 0
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
