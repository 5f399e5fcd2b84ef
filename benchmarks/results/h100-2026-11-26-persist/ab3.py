"""A/B on the H100: the forward as committed before (HEAD: one tile a program) against the working tree (persistent
grid at d128 without a mask; per-warpgroup Q barriers). CUDA-graph replays, 3 interleaved rounds."""
import json, os, sys, time, importlib.util
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import fa2dist
from fa2dist.ops import attention
from bench_attention import _graph_ms
OUT = os.environ.get("OUT", ".")
spec = importlib.util.spec_from_file_location("hopper_head", os.environ.get("HEAD_HOPPER", "hopper_head.py"))
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
NEW = attention._attn_fwd_ws
def old_fwd(q, k, v, out, lse, feats, layout, batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim):
    block_m, block_n, stages, ctas = old.ws_tiles(head_dim, seqlen_k)
    descs = attention._ws_descriptors(layout, head_dim, (q, 64), (k, block_n), (v, block_n), (out, 64))
    old.attn_fwd_ws_kernel[(-(-seqlen_q // block_m), nheads, batch)](
        *descs, lse, feats.softmax_scale, *attention._lse_strides(lse, layout), nheads // nheads_kv, seqlen_q, seqlen_k,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, STAGES=stages, CAUSAL=feats.window_right == 0,
        INTERLEAVE=old.ws_interleave(head_dim, seqlen_k), num_warps=4, **old.ws_launch_options(block_m, ctas))
def use(name):
    attention._attn_fwd_ws = NEW if name == "new" else old_fwd
t0 = time.time(); res = []
for d, N, causal in [(128, 1024, False), (128, 2048, False), (128, 4096, False), (128, 16384, False), (128, 1024, True),
                     (128, 4096, True), (128, 16384, True), (64, 1024, False), (64, 1024, True), (64, 4096, False),
                     (64, 4096, True), (256, 1024, False), (256, 4096, True)]:
    H = 2048 // d; B = 16384 // N
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    fl = 4 * B * H * N * N * d / (2 if causal else 1)
    row = dict(d=d, N=N, causal=causal)
    use("head"); o0 = fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd")
    use("new"); row["equal"] = torch.equal(o0, fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd"))
    for rep in range(3):
        for name in ("head", "new"):
            use(name)
            row.setdefault(name, []).append(round(fl / _graph_ms(lambda: fa2dist.flash_attention(q, k, v, causal=causal, layout="bhsd"), 100) / 1e9, 1))
    if N in (1024, 4096) and d == 128:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            row["cudnn"] = round(fl / _graph_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), 100) / 1e9, 1)
    print(json.dumps(row), round(time.time() - t0), "s", flush=True); res.append(row)
    json.dump(res, open(os.path.join(OUT, "ab3_fwd.json"), "w"), indent=1)
