"""Plots of steady_rowshares.json (the code with row-sum shares at d64, every head dim and length): medians of its 3 rounds,
through benchmarks/bench_attention.py's `plot` and the row reader of ../h100-2026-11-27-kfree/plot_steady.py."""
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "plot_steady", os.path.join(HERE, "..", "h100-2026-11-27-kfree", "plot_steady.py"))
plot_steady = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_steady)

if __name__ == "__main__":
    rows = plot_steady.rows_of(os.path.join(HERE, "steady_rowshares.json"), (64, 128, 256))
    rows.sort(key=lambda r: (r["provider"], r["head_dim"], r["causal"], r["seqlen"]))
    plot_steady.plot(rows, HERE)
