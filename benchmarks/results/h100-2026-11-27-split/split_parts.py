"""Where the split forward's time goes: whole tiles only, the split forward with and without its merge launch (the
output unmerged), and the merge launch alone (CUDA-graph replays, 3 interleaved rounds). Usage:
python benchmarks/results/h100-2026-11-27-split/split_parts.py; writes $OUT/split_parts.json."""
import functools
import json
import os
import sys

import torch

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_attention import _graph_ms  # noqa: E402

import fa2dist  # noqa: E402
import fa2dist.ops.attention as att  # noqa: E402
from fa2dist.ops.kernels import hopper  # noqa: E402

OUT = os.environ.get("OUT", ".")
MERGE = att.attn_fwd_merge_kernel
launches = []


class _Merge:
    """Records each merge launch's arguments; launches it only where ``on``."""
    on = True

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            launches.append((grid, args, kwargs))
            if self.on:
                MERGE[grid](*args, **kwargs)
        return launch


merge = att.attn_fwd_merge_kernel = _Merge()


def run(share, merged, q, k, v):
    hopper.WS_SPLIT_SHARE, merge.on = share, merged
    return fa2dist.flash_attention(q, k, v, layout="bhsd")


res = {}
for r in range(3):
    for d, n in [(64, 1024), (128, 1024), (128, 4096), (128, 16384)]:
        b, h = 16384 // n, 2048 // d
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        key = f"d{d} n{n}"
        out = res.setdefault(key, {})
        for name, share, merged in [("base", 0.0, True), ("split", 1.0, True), ("split_nomerge", 1.0, False)]:
            ms = _graph_ms(functools.partial(run, share, merged, q, k, v), 100)
            out.setdefault(name, []).append(round(ms * 1e3, 1))
        launches.clear()
        run(1.0, True, q, k, v)
        grid, args, kwargs = launches[-1]
        alone = functools.partial(MERGE[grid], *args, **kwargs)
        out.setdefault("merge_alone", []).append(round(_graph_ms(alone, 200) * 1e3, 2))
        print(r, key, {k2: v2[-1] for k2, v2 in out.items()}, flush=True)
json.dump({"us": res, "device": torch.cuda.get_device_name()}, open(os.path.join(OUT, "split_parts.json"), "w"),
          indent=1)
