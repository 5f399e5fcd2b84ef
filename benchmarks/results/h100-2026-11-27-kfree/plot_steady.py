"""Plots of the warmed runs on the current code (benchmarks/bench_attention.py's `plot`): d64 and d256 from
steady_kfree.json, d128 from steady_d128.json (its 2-stage tiles up to 2k keys). Medians of the 3 rounds; the forward
is timed once for both modes (the same kernel)."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
from bench_attention import plot  # noqa: E402

PROVIDERS = {"sp": "fa2dist-sp", "det": "fa2dist-det", "flash": "sdpa-flash", "cudnn": "sdpa-cudnn"}


def rows_of(path, head_dims):
    rows = {}
    for key, vals in json.load(open(os.path.join(HERE, path))).items():
        d, n, causal, mode = key.split()
        if int(d[1:]) not in head_dims:
            continue
        for name, samples in vals.items():
            row = rows.setdefault((name, d, n, causal), dict(
                provider=PROVIDERS[name], dtype="bf16", head_dim=int(d[1:]), seqlen=int(n[1:]),
                causal=causal == "causal"))
            row[f"{mode}_tflops"] = sorted(samples)[len(samples) // 2]
    return list(rows.values())


if __name__ == "__main__":
    # With arguments JSON OUTDIR: every head dim of one warmed run, plotted into OUTDIR.
    if len(sys.argv) == 3:
        rows = rows_of(sys.argv[1], (64, 128, 256))
        rows.sort(key=lambda r: (r["provider"], r["head_dim"], r["causal"], r["seqlen"]))
        plot(rows, sys.argv[2])
        sys.exit()
    rows = rows_of("steady_kfree.json", (64, 256)) + rows_of("steady_d128.json", (128,))
    rows.sort(key=lambda r: (r["provider"], r["head_dim"], r["causal"], r["seqlen"]))
    plot(rows, HERE)
