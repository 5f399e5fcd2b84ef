"""The kernels on a CUDA GPU (marker ``gpu``): correctness matrix, bf16, head dim 256, long sequences,
bitwise determinism, the warp-specialised Hopper forward (Gluon), every family's config through the override, and
the seed package's usage examples."""

import warnings
import zlib

import pytest
import torch

import fa2dist
from fa2dist.configs import FAMILIES
from tests.helpers import check_against_reference, make_qkv, max_err, reference_with_grads, to_bhsd

pytestmark = pytest.mark.gpu


def _run(shape, causal, dtype, layout, deterministic, config=None):
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
    seed = zlib.crc32(repr((shape, causal, dtype, layout, deterministic)).encode())
    q, k, v = make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, dtype, "cuda", layout, seed)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = fa2dist.flash_attention(q, k, v, causal=causal, layout=layout, deterministic=deterministic, config=config)
    # Seeded like the inputs: the same case draws the same gradient in every run, whatever the test order.
    do = torch.randn(out.shape, generator=torch.Generator(device="cuda").manual_seed(seed + 1), device="cuda").to(
        out.dtype
    )
    grads = torch.autograd.grad(out, (q, k, v), do)
    out64, _, grads64 = reference_with_grads(q, k, v, do, causal, layout, torch.float64)
    outlp, _, gradslp = reference_with_grads(q, k, v, do, causal, layout, None)
    # The absolute slack covers fp32-accumulation noise where PyTorch's own error is exactly 0 (e.g. seqlen 1, where
    # dq = 0 mathematically and PyTorch happens to round to exactly 0).
    atol = 1e-6 if dtype == torch.float32 else 1e-5
    check_against_reference("out", to_bhsd(out, layout), out64, outlp, 2, atol)
    for name, g, g64, glp in zip(("dq", "dk", "dv"), grads, grads64, gradslp):
        check_against_reference(name, to_bhsd(g, layout), g64, glp, 3, atol)


SHAPES = [
    (2, 4, 4, 1, 1, 16),
    (2, 4, 1, 17, 17, 40),
    (1, 8, 2, 97, 1025, 64),
    (1, 8, 8, 1025, 97, 80),
    (2, 4, 4, 200, 200, 96),
    (1, 4, 1, 513, 513, 128),
    (1, 4, 2, 300, 700, 256),
    (1, 8, 2, 2048, 2048, 128),
]


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}h{}-{}q{}k{}d{}".format(*s))
def test_matches_reference(shape, causal, dtype, deterministic):
    # Alternate the layouts over the matrix: both are covered for every dtype and mode without doubling it.
    layout = ("bshd", "bhsd")[(SHAPES.index(shape) + causal) % 2]
    _run(shape, causal, dtype, layout, deterministic)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_long_sequence(head_dim, causal):
    _run((1, 2, 1, 8192, 8192, head_dim), causal, torch.bfloat16, "bshd", False)


@pytest.mark.parametrize("head_dim", [64, 128], ids=["d64", "d128"])
def test_batch_times_heads_past_the_grid_limit(head_dim):
    """batch * heads = 70400, past the 65535 a launch grid's second axis may hold: the grids put heads and batch on
    axes of their own. Forward and backward in both modes (on sm_90 the Gluon forward, at d64 two programs per SM);
    samples of the batch checked against float64, sliced (heads and sequences are independent)."""
    batch, nheads, seqlen = 1100, 64, 24
    q, k, v = make_qkv(batch, nheads, nheads, seqlen, seqlen, head_dim, torch.bfloat16, "cuda", "bhsd", seed=11)
    do = torch.randn_like(q)
    picks = [0, 547, batch - 1]
    for deterministic in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fa2dist.flash_attention(*leaves, causal=True, layout="bhsd", deterministic=deterministic)
        grads = torch.autograd.grad(out, leaves, do)
        sliced = [t[picks] for t in (q, k, v)]
        out64, _, grads64 = reference_with_grads(*sliced, do[picks], True, "bhsd", torch.float64)
        outlp, _, gradslp = reference_with_grads(*sliced, do[picks], True, "bhsd", None)
        check_against_reference("out", out[picks], out64, outlp, 2, 1e-5)
        for name, g, g64, glp in zip(("dq", "dk", "dv"), grads, grads64, gradslp):
            check_against_reference(name, g[picks], g64, glp, 3, 1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_deterministic_bitwise_over_five_runs(causal):
    q, k, v = make_qkv(2, 16, 16, 4096, 4096, 128, torch.bfloat16, "cuda", "bshd", seed=1)
    do = torch.randn_like(q)
    first = None
    for _ in range(5):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fa2dist.flash_attention(*leaves, causal=causal, deterministic=True)
        grads = torch.autograd.grad(out, leaves, do)
        if first is None:
            first = (out, *grads)
        else:
            for a, b in zip(first, (out, *grads)):
                assert torch.equal(a, b)


WS_SHAPES = [
    (2, 4, 4, 1000, 1000, 128),
    (1, 3, 3, 333, 517, 128),
    (1, 8, 2, 777, 777, 128),
    (1, 2, 2, 300, 64, 128),  # causal: the first 236 rows see no key
    (1, 4, 4, 1, 77, 128),
    (1, 2, 1, 129, 1031, 128),
    (2, 8, 8, 4096, 4096, 128),
    (2, 4, 2, 555, 555, 64),  # d64 below 1280 keys: 256-row tiles (four warpgroups); causal, two programs
    (1, 2, 2, 300, 64, 64),
    (1, 3, 3, 1, 1031, 64),
    (1, 4, 2, 1600, 1700, 64),  # causal below 2k keys: two programs; without a mask: 192-row tiles from a counter
    (1, 2, 2, 2000, 1600, 64),  # causal: the first 400 rows see no key
    (2, 3, 3, 2048, 2048, 64),
    (1, 3, 1, 1000, 3000, 64),
    (1, 4, 2, 333, 4500, 64),  # d64 from 1280 keys without a mask, past 4k causal: 192-row tiles (three warpgroups)
    (1, 2, 2, 2050, 2050, 64),  # causal past 2k keys: 256-row tiles in 6 stages, drawn from a counter
    (1, 2, 2, 8200, 8200, 64),
    (1, 2, 1, 200, 9000, 64),
    (1, 2, 2, 9000, 8192, 64),  # causal: each of the three warpgroups stops at its own last key tile
    (1, 4, 2, 333, 517, 256),  # d256: 64-key tiles in two stages, K freed apart from V
    (2, 2, 2, 1031, 1031, 256),
    (1, 2, 1, 300, 64, 256),
    (1, 2, 2, 1000, 300, 256),  # causal: the first 700 rows see no key
    (1, 3, 3, 2100, 2100, 256),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_warp_specialized_forward(causal, dtype, monkeypatch):
    """The Gluon forward on sm_90: taken for dense calls (counted), within 2x PyTorch's own output error, LSE
    within 1e-4 of float64's, rows that see no key 0 with LSE +inf, bitwise equal on a second run; and calls with
    softcap or dropout keep the Triton forward (windows: ``test_warp_specialized_windows``)."""
    from fa2dist.ops import attention

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised forward runs on sm_90")
    calls = []
    launch = attention._attn_fwd_ws
    monkeypatch.setattr(attention, "_attn_fwd_ws", lambda *a: calls.append(a[-1]) or launch(*a))
    for i, shape in enumerate(WS_SHAPES):
        layout = ("bshd", "bhsd")[i % 2]
        batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
        seed = zlib.crc32(repr((shape, causal, dtype)).encode())
        q, k, v = make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, dtype, "cuda", layout, seed)
        n_calls = len(calls)
        out, lse = fa2dist.flash_attention(q, k, v, causal=causal, layout=layout, return_lse=True)
        assert len(calls) == n_calls + 1, f"{shape}: the warp-specialised forward was not taken"
        out64, lse64, _ = reference_with_grads(q, k, v, torch.zeros_like(q), causal, layout, torch.float64)
        outlp, _, _ = reference_with_grads(q, k, v, torch.zeros_like(q), causal, layout, None)
        check_against_reference(f"out {shape}", to_bhsd(out, layout), out64, outlp, 2, 1e-5)
        seen = torch.isfinite(lse64)
        assert torch.equal(torch.isfinite(lse), seen) and (lse[~seen] == float("inf")).all()
        assert (to_bhsd(out, layout)[~seen] == 0).all()
        if seen.any():
            assert max_err(lse[seen], lse64[seen]) < 1e-4
        again, lse2 = fa2dist.flash_attention(q, k, v, causal=causal, layout=layout, return_lse=True)
        assert torch.equal(out, again) and torch.equal(lse, lse2)
    q, k, v = make_qkv(1, 4, 4, 256, 256, 128, dtype, "cuda", "bshd", 0)
    n_calls = len(calls)
    for kwargs in (dict(softcap=20.0), dict(dropout_p=0.1)):
        fa2dist.flash_attention(q, k, v, causal=causal, **kwargs)
    # A head dim without Gluon tiles.
    fa2dist.flash_attention(*make_qkv(1, 4, 4, 256, 256, 96, dtype, "cuda", "bshd", 0), causal=causal)
    assert len(calls) == n_calls


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [(2, 4, 2, 1100, 1000, 256), (1, 3, 3, 4100, 4100, 256), (2, 3, 3, 1000, 1900, 64),
                                   (2, 4, 4, 1500, 1500, 128), (1, 4, 4, 2100, 2100, 128)],
                         ids=lambda s: "b{}h{}-{}q{}k{}d{}".format(*s))
def test_forward_k_free_changes_no_bit(shape, causal, monkeypatch):
    """Freeing each K buffer apart from its V buffer (``ws_k_free``) changes when the ring's loads may start, not
    what is computed: output and LSE bitwise equal with and without it, on each head dim's tiles (2 stages at d256
    and at d128 up to 2k keys, more elsewhere)."""
    from fa2dist.ops import attention

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised forward runs on sm_90")
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
    q, k, v = make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, torch.bfloat16, "cuda", "bshd", 5)
    runs = []
    for k_free in (True, False):
        monkeypatch.setattr(attention, "ws_k_free", lambda stages, k_free=k_free: k_free)
        runs.append(fa2dist.flash_attention(q, k, v, causal=causal, return_lse=True))
    (out1, lse1), (out2, lse2) = runs
    assert torch.equal(out1, out2) and torch.equal(lse1, lse2)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [(2, 4, 2, 1000, 1037, 64), (1, 3, 3, 2050, 2050, 64), (1, 4, 2, 333, 4500, 64),
                                   (2, 3, 3, 777, 1031, 128), (1, 2, 2, 1031, 1031, 256)],
                         ids=lambda s: "b{}h{}-{}q{}k{}d{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_forward_row_shares_match_quad_sums(shape, causal, dtype, monkeypatch):
    """Each thread's share of the row sums, added across the quad after the last key tile (``ws_row_shares``), on
    every d64 tile (256 rows, two programs of 128, 192x128, 6 stages) and on the 128- and 64-key tiles of d128 and
    d256: the output as close to float64 as with the quad's sums every tile, LSE equal to a few fp32 ulps."""
    from fa2dist.ops import attention

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised forward runs on sm_90")
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
    q, k, v = make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, dtype, "cuda", "bshd", 9)
    out64, lse64, _ = reference_with_grads(q, k, v, torch.zeros_like(q), causal, "bshd", torch.float64)
    outlp, _, _ = reference_with_grads(q, k, v, torch.zeros_like(q), causal, "bshd", None)
    seen = torch.isfinite(lse64)
    lses = []
    for shares in (True, False):
        monkeypatch.setattr(attention, "ws_row_shares", lambda head_dim, shares=shares: shares)
        out, lse = fa2dist.flash_attention(q, k, v, causal=causal, return_lse=True)
        check_against_reference(f"out (shares {shares})", to_bhsd(out, "bshd"), out64, outlp, 2, 1e-5)
        assert torch.equal(torch.isfinite(lse), seen) and max_err(lse[seen], lse64[seen]) < 1e-4
        lses.append(lse[seen])
    assert max_err(lses[0], lses[1]) <= 8 * torch.finfo(torch.float32).eps * lses[1].abs().max().clamp(min=1).item()


@pytest.mark.parametrize("shape", [(3, 5, 5, 1100, 1000, 128), (2, 3, 1, 700, 700, 64), (1, 6, 3, 4200, 4100, 128)],
                         ids=lambda s: "b{}h{}-{}q{}k{}d{}".format(*s))
def test_interleaved_causal_forward_matches_head_by_head(shape, monkeypatch):
    """The causal Gluon forward's interleaved grid order (``ws_interleave``; group sizes that do not divide
    batch x heads included) computes every tile once: output and LSE bitwise equal to the head-by-head order."""
    from fa2dist.ops.kernels import hopper

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised forward runs on sm_90")
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
    assert hopper.ws_interleave(head_dim, seqlen_k) > 1
    q, k, v = make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, torch.bfloat16, "cuda", "bshd", 7)
    out, lse = fa2dist.flash_attention(q, k, v, causal=True, return_lse=True)
    monkeypatch.setattr(hopper, "WS_INTERLEAVE", ())
    assert hopper.ws_interleave(head_dim, seqlen_k) == 1
    out1, lse1 = fa2dist.flash_attention(q, k, v, causal=True, return_lse=True)
    assert torch.equal(out, out1) and torch.equal(lse, lse1)


PERSISTENT_CASES = [  # (shape, causal): the fixed persistent grid, then the dynamic one
    ((2, 4, 2, 777, 4100, 128), False),
    ((1, 3, 3, 300, 16384, 128), False),
    ((40, 16, 16, 1024, 1024, 128), False),  # many tiles a program
    ((40, 16, 16, 1024, 1024, 128), True),
    ((1, 3, 3, 65, 129, 128), False),  # fewer tiles than programs
    ((1, 3, 3, 65, 129, 128), True),
    ((3, 7, 7, 1500, 1000, 128), True),  # rows that see no key
    ((2, 6, 2, 1000, 1900, 64), True),  # grouped-query heads, two programs per SM
    ((24, 16, 16, 1024, 1024, 64), False),
    ((24, 16, 16, 1024, 1024, 64), True),  # two programs per SM
    ((3, 4, 4, 2048, 2048, 64), True),  # 256-row tiles in 4 stages
    ((2, 4, 2, 4000, 4000, 64), True),  # in 6 stages
    ((1, 3, 3, 65, 129, 64), False),
    ((2, 4, 2, 1500, 1700, 64), False),  # 192-row tiles drawn from a counter (1280 to 4096 keys)
    ((2, 3, 3, 3000, 3000, 64), False),
    ((2, 3, 3, 1100, 700, 64), True),  # rows that see no key free their Q buffer at once (the output buffer)
    ((2, 3, 3, 2000, 1600, 64), True),
]


@pytest.mark.parametrize("shape,causal", PERSISTENT_CASES,
                         ids=lambda c: "b{}h{}-{}q{}k{}d{}".format(*c) if isinstance(c, tuple) else str(c))
def test_persistent_forward_matches_one_tile_a_program(shape, causal, monkeypatch):
    """The Gluon forward's persistent grids (``ws_persistent``, and ``ws_dynamic``'s programs drawing tiles from a
    counter: fewer programs than tiles, more programs than tiles, grouped-query heads, causal rows that see no key)
    compute every tile once: output and LSE bitwise equal to one tile a program. The dynamic kernel leaves its counter
    at zero: three launches on one counter agree bitwise."""
    from fa2dist.ops import attention
    from fa2dist.ops.kernels import hopper

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised forward runs on sm_90")
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
    dynamic = hopper.ws_dynamic(head_dim, causal, seqlen_k)
    assert dynamic or hopper.ws_persistent(head_dim, causal, seqlen_k)
    q, k, v = make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, torch.bfloat16, "cuda", "bshd", 3)
    counter = torch.zeros(1, dtype=torch.int32, device="cuda")
    monkeypatch.setattr(attention, "_tile_counter", lambda device: counter)
    runs = []
    for _ in range(3 if dynamic else 1):
        runs.append(fa2dist.flash_attention(q, k, v, causal=causal, return_lse=True))
        assert counter.item() == 0
    monkeypatch.setattr(hopper, "WS_PERSISTENT", ())
    monkeypatch.setattr(hopper, "WS_DYNAMIC", ())
    assert not (hopper.ws_persistent(head_dim, causal, seqlen_k) or hopper.ws_dynamic(head_dim, causal, seqlen_k))
    out1, lse1 = fa2dist.flash_attention(q, k, v, causal=causal, return_lse=True)
    for out, lse in runs:
        assert torch.equal(out, out1) and torch.equal(lse, lse1)


SPLIT_TAIL_CASES = [  # d128 without a mask from 2049 keys, more query tiles than the H100's 132 programs
    (1, 16, 16, 4096, 4096, 128),  # 512 tiles: the last 116 split, 28 key tiles a program
    (1, 5, 5, 4133, 4133, 128),  # 33 tiles split 4-5 ways, the last key tile part-filled
    (2, 9, 3, 1100, 4100, 128),  # grouped-query heads, N_Q != N_K
    (1, 4, 2, 8300, 2100, 128),
    (1, 7, 7, 2432, 2100, 128),  # 133 tiles: the last one split 17 ways, most programs without a part
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SPLIT_TAIL_CASES, ids=lambda s: "b{}h{}-{}q{}k{}d{}".format(*s))
def test_split_tail_forward(shape, dtype, monkeypatch):
    """The persistent forward that shares the tiles past its last whole round out by keys (``ws_split_tail``):
    output within 2x PyTorch's own error and LSE within 1e-4 of float64's, equal to one tile a program within the
    rounding of the parts' sums, and bitwise equal over three runs (the finishing parts add the writers' in a fixed
    order)."""
    from fa2dist.ops import attention
    from fa2dist.ops.kernels import hopper

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised forward runs on sm_90")
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
    n_tiles = batch * nheads * -(-seqlen_q // 128)
    assert hopper.ws_split_tail(head_dim, False, seqlen_k, n_tiles, min(n_tiles, attention._sm_count(torch.device(
        "cuda")))), "not a split-tail shape on this GPU"
    q, k, v = make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, dtype, "cuda", "bhsd", 11)
    runs = [fa2dist.flash_attention(q, k, v, layout="bhsd", return_lse=True) for _ in range(3)]
    out, lse = runs[0]
    for again, lse2 in runs[1:]:
        assert torch.equal(out, again) and torch.equal(lse, lse2)
    out64, lse64, _ = reference_with_grads(q, k, v, torch.zeros_like(q), False, "bhsd", torch.float64)
    outlp, _, _ = reference_with_grads(q, k, v, torch.zeros_like(q), False, "bhsd", None)
    check_against_reference(f"out {shape}", out, out64, outlp, 2, 1e-5)
    assert max_err(lse, lse64) < 1e-4
    monkeypatch.setattr(hopper, "WS_SPLIT_TAIL", ())
    whole, lse_whole = fa2dist.flash_attention(q, k, v, layout="bhsd", return_lse=True)
    assert max_err(lse, lse_whole) < 1e-5 and max_err(out, whole) <= 2 * max_err(whole, out64)


WS_BWD_SHAPES = [
    (2, 4, 4, 1000, 1000, 128),
    (1, 3, 3, 333, 517, 128),
    (1, 8, 2, 777, 777, 128),  # grouped-query heads: dK/dV sum over the group
    (1, 2, 2, 300, 64, 128),  # causal: the first 236 rows see no key
    (1, 2, 1, 129, 1031, 128),
    (1, 4, 4, 2048, 2048, 128),
    (2, 4, 2, 555, 555, 64),  # d64
    (1, 2, 2, 1031, 129, 64),
    (1, 4, 2, 4100, 4100, 128),  # causal d128 from 3k keys: the sequence-parallel mode adds dQ from the kernel too
    (1, 2, 2, 300, 4096, 128),
    (1, 3, 3, 700, 4100, 64),  # causal d64 from 4k keys: dQ from the kernel too
    (1, 4, 2, 333, 517, 256),  # d256: the split-role kernel
    (2, 2, 2, 1031, 1031, 256),
    (1, 2, 1, 300, 64, 256),
    (1, 2, 2, 1000, 300, 256),  # causal: the dQ pass's first warpgroup stops a tile or two early
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_warp_specialized_backward(causal, dtype, monkeypatch):
    """The Gluon dK/dV kernel on sm_90: taken by both modes where ``ws_bwd_tiles`` has tiles (counted; the
    sequence-parallel mode adds dQ from it), not elsewhere; gradients within 3x PyTorch's own error against float64;
    the deterministic mode bitwise equal across runs."""
    from fa2dist.ops import attention
    from fa2dist.ops.kernels.hopper import ws_bwd_tiles, ws_dq_tiles, ws_fused_dq

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised backward runs on sm_90")
    calls = []
    launch = attention._attn_bwd_dkdv_ws
    # The call's dq_acc argument: an fp32 buffer where the kernel adds dQ (the sequence-parallel mode).
    monkeypatch.setattr(attention, "_attn_bwd_dkdv_ws", lambda *a: calls.append(a[6] is not None) or launch(*a))
    dq_calls = []
    launch_dq = attention._attn_bwd_dq_ws
    monkeypatch.setattr(attention, "_attn_bwd_dq_ws", lambda *a: dq_calls.append(a[-1]) or launch_dq(*a))
    for i, shape in enumerate(WS_BWD_SHAPES):
        layout = ("bshd", "bhsd")[i % 2]
        taken = ws_bwd_tiles(shape[-1], causal) is not None
        for deterministic in (True, False):
            n_calls, n_dq_calls = len(calls), len(dq_calls)
            _run(shape, causal, dtype, layout, deterministic)
            fused = not deterministic and ws_fused_dq(shape[-1], causal, shape[4])
            assert calls[n_calls:] == [fused] * taken, f"{shape}, deterministic={deterministic}"
            ws_dq = taken and not fused and ws_dq_tiles(shape[-1]) is not None  # the warp-specialised dQ pass
            assert len(dq_calls) == n_dq_calls + ws_dq, f"{shape}, deterministic={deterministic}"
    assert dq_calls, "no shape took the warp-specialised dQ kernel"
    # Other features and head dims keep the Triton kernels.
    n_calls = len(calls)
    _run((1, 4, 4, 300, 300, 96), causal, dtype, "bshd", True)
    q, k, v = make_qkv(1, 4, 4, 300, 300, 128, dtype, "cuda", "bshd", seed=3)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    fa2dist.flash_attention(q, k, v, causal=causal, softcap=20.0).sum().backward()
    assert len(calls) == n_calls
    q, k, v = make_qkv(2, 8, 2, 1500, 1500, 128, dtype, "cuda", "bshd", seed=5)
    do = torch.randn_like(q)
    first = None
    for _ in range(3):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        grads = torch.autograd.grad(fa2dist.flash_attention(*leaves, causal=causal, deterministic=True), leaves, do)
        if first is None:
            first = grads
        for a, b in zip(first, grads):
            assert torch.equal(a, b)


# Sliding windows through the Gluon kernels: (shape, window_size). The tiles and grid follow the window's width where
# both sides are bounded (``attention._key_span``), so these reach the short- and long-sequence tiles of every head dim:
# rows that see no key (N_Q > N_K), windows narrower than a tile, left- or right-only windows, GQA, the fused dQ.
WS_WINDOW_CASES = [
    ((2, 8, 2, 1000, 1100, 128), (256, 0)),
    ((2, 8, 2, 1000, 1100, 128), (5, 3)),
    ((2, 8, 2, 1000, 1100, 128), (300, -1)),
    ((2, 8, 2, 1000, 1100, 128), (-1, 200)),
    ((2, 8, 2, 1000, 1100, 128), (1, 0)),
    ((1, 4, 4, 777, 513, 64), (100, 0)),
    ((1, 4, 4, 777, 513, 64), (40, 7)),
    ((2, 4, 2, 3000, 3000, 64), (1500, 0)),
    ((2, 4, 2, 3000, 3000, 64), (2500, 0)),
    ((2, 4, 2, 3000, 3000, 64), (700, -1)),
    ((1, 4, 2, 5000, 5000, 128), (3000, 0)),
    ((1, 4, 2, 5000, 5000, 128), (3500, 0)),
    ((1, 4, 2, 5000, 5000, 128), (2000, 100)),
    ((1, 4, 2, 5000, 4800, 128), (1000, -1)),
    ((1, 4, 2, 1000, 1200, 256), (200, 0)),
    ((1, 4, 2, 1000, 1200, 256), (300, -1)),
]


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
@pytest.mark.parametrize("shape,window", WS_WINDOW_CASES,
                         ids=lambda c: "b{}h{}-{}q{}k{}d{}".format(*c) if len(c) == 6 else "w{}_{}".format(*c))
def test_warp_specialized_windows(shape, window, deterministic, monkeypatch):
    """Sliding windows on sm_90 run the Gluon forward and dK/dV kernels (counted) and, in the deterministic mode,
    the Gluon dQ kernel where its head dim has one: output within 2x PyTorch's own error against float64, gradients
    within 3x, LSE +inf exactly where a row sees no key; the deterministic mode bitwise equal on a second run."""
    from fa2dist.ops import attention
    from fa2dist.ops.kernels.hopper import ws_dq_tiles, ws_fused_dq
    from tests.feature_cases import check_dense

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised kernels run on sm_90")
    calls = {"fwd": 0, "dkdv": 0, "dq": 0}

    def counted(name, fn):
        return lambda *a: calls.__setitem__(name, calls[name] + 1) or fn(*a)

    monkeypatch.setattr(attention, "_attn_fwd_ws", counted("fwd", attention._attn_fwd_ws))
    monkeypatch.setattr(attention, "_attn_bwd_dkdv_ws", counted("dkdv", attention._attn_bwd_dkdv_ws))
    monkeypatch.setattr(attention, "_attn_bwd_dq_ws", counted("dq", attention._attn_bwd_dq_ws))
    features = dict(window_size=window)
    check_dense(f"window {window}", features, shape, torch.bfloat16, "cuda", deterministic)
    feats = attention.Features(shape[-1] ** -0.5, *window)
    fused = not deterministic and ws_fused_dq(shape[-1], window[1] >= 0, attention._key_span(feats, shape[4]))
    ws_dq = not fused and ws_dq_tiles(shape[-1]) is not None
    assert calls == {"fwd": 1, "dkdv": 1, "dq": int(ws_dq)}, calls
    if deterministic:
        batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
        q, k, v = make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, torch.float16, "cuda", "bshd", 7)
        do = torch.randn_like(q)
        runs = []
        for _ in range(2):
            leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
            out = fa2dist.flash_attention(*leaves, window_size=window, deterministic=True)
            runs.append((out, *torch.autograd.grad(out, leaves, do)))
        for a, b in zip(*runs):
            assert torch.equal(a, b)


# Packed sequences through the Gluon kernels: (head dim, features, query lengths, key lengths). Empty and one-token
# sequences, lengths that end mid-tile and on a tile's edge, longer keys than queries and the reverse, sequences of
# several tiles (the copy engine writes whole tiles, the last rows of each sequence are stored one by one).
WS_VARLEN_CASES = [
    (128, {}, [1000, 0, 1, 513, 2048, 77], [900, 5, 1, 513, 2048, 300]),
    (128, dict(causal=True), [1000, 0, 1, 513, 2048, 77], [900, 5, 1, 513, 2048, 300]),
    (128, dict(causal=True, window_size=(100, 0)), [3000, 128, 700], [3000, 256, 650]),
    (64, {}, [1500, 64, 1, 999], [1500, 64, 3, 1000]),
    (64, dict(causal=True), [1500, 64, 1, 999], [1500, 64, 3, 1000]),
    (64, dict(window_size=(50, 20)), [4100, 700], [4100, 800]),
    (256, dict(causal=True), [600, 1, 333], [700, 2, 333]),
    (256, {}, [600, 1, 333], [700, 2, 333]),
]


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
@pytest.mark.parametrize("case", range(len(WS_VARLEN_CASES)))
def test_warp_specialized_varlen(case, deterministic, monkeypatch):
    """Packed sequences on sm_90 run the Gluon forward and dK/dV kernels (counted) and, in both modes, the Gluon dQ
    kernel where its head dim has one: output within 2x PyTorch's own error against float64, gradients within 3x,
    LSE +inf exactly where a row sees no key; the deterministic mode bitwise equal on a second run."""
    from fa2dist.ops import attention
    from fa2dist.ops.kernels.hopper import ws_dq_tiles
    from tests.feature_cases import check_varlen

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised kernels run on sm_90")
    head_dim, features, lens_q, lens_k = WS_VARLEN_CASES[case]
    calls = {"fwd": 0, "dkdv": 0, "dq": 0}

    def counted(name, fn):
        return lambda *a, **kw: calls.__setitem__(name, calls[name] + 1) or fn(*a, **kw)

    monkeypatch.setattr(attention, "_attn_fwd_ws", counted("fwd", attention._attn_fwd_ws))
    monkeypatch.setattr(attention, "_attn_bwd_dkdv_ws", counted("dkdv", attention._attn_bwd_dkdv_ws))
    monkeypatch.setattr(attention, "_attn_bwd_dq_ws", counted("dq", attention._attn_bwd_dq_ws))
    check_varlen(f"varlen {features}", features, lens_q, lens_k, 8, 2, head_dim, torch.bfloat16, "cuda",
                 deterministic)
    assert calls == {"fwd": 1, "dkdv": 1, "dq": int(ws_dq_tiles(head_dim) is not None)}, calls
    if deterministic:
        cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
        cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
        g = torch.Generator().manual_seed(case)
        q = torch.randn(sum(lens_q), 8, head_dim, generator=g).cuda().half()
        k, v = (torch.randn(sum(lens_k), 2, head_dim, generator=g).cuda().half() for _ in range(2))
        do = torch.randn_like(q)
        runs = []
        for _ in range(2):
            leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
            out = fa2dist.flash_attention_varlen(*leaves, cu_q, cu_k, max(lens_q), max(lens_k), deterministic=True,
                                                 **features)
            runs.append((out, *torch.autograd.grad(out, leaves, do)))
        for a, b in zip(*runs):
            assert torch.equal(a, b)


def test_warp_specialized_forward_falls_back_when_it_does_not_compile(monkeypatch):
    """A Triton whose Gluon cannot compile the kernel runs the Triton forward, with one warning."""
    from fa2dist.ops import attention

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised forward runs on sm_90")

    def broken(*args):
        raise TypeError("warp_specialize() got an unexpected keyword argument")

    monkeypatch.setattr(attention, "_attn_fwd_ws", broken)
    monkeypatch.setattr(attention, "_ws_error", None)
    q, k, v = make_qkv(1, 4, 4, 300, 300, 128, torch.bfloat16, "cuda", "bshd", 3)
    with pytest.warns(UserWarning, match="does not compile here"):
        out = fa2dist.flash_attention(q, k, v, causal=True)
    assert attention._ws_error.startswith("TypeError")
    out64, _, _ = reference_with_grads(q, k, v, torch.zeros_like(q), True, "bshd", torch.float64)
    outlp, _, _ = reference_with_grads(q, k, v, torch.zeros_like(q), True, "bshd", None)
    check_against_reference("out", to_bhsd(out, "bshd"), out64, outlp, 2, 1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(fa2dist.flash_attention(q, k, v, causal=True), out)


@pytest.mark.parametrize("broken", ["_attn_bwd_dkdv_ws", "_attn_bwd_dq_ws"])
def test_warp_specialized_backward_falls_back_when_it_does_not_compile(broken, monkeypatch):
    """A Triton whose Gluon cannot compile a backward kernel runs the Triton kernels for it, with one warning, and
    the gradients stay right."""
    from fa2dist.ops import attention

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised backward runs on sm_90")

    def fail(*args):
        raise TypeError("warp_specialize() got an unexpected keyword argument")

    monkeypatch.setattr(attention, broken, fail)
    monkeypatch.setattr(attention, "_ws_error", None)
    with pytest.warns(UserWarning, match="backward does not compile here"):
        _run((1, 4, 2, 300, 300, 128), True, torch.bfloat16, "bshd", True)
    assert attention._ws_error.startswith("TypeError")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_config_through_override(family, monkeypatch):
    config, needs = FAMILIES[family]
    if torch.cuda.get_device_capability() < needs:
        pytest.skip(f"{family} tiles need compute capability {needs}")
    for shape in [(1, 4, 2, 333, 333, 64), (1, 4, 4, 257, 129, 128), (1, 2, 2, 130, 130, 256)]:
        for causal in (False, True):
            for det in (True, False):
                _run(shape, causal, torch.bfloat16, "bshd", det, config=config)


def test_seed_usage_examples_run_unchanged():
    import triton

    from fa2dist import KernelsConfigV2, flash_attention_v2, flash_attention_v2_custom, init_to_zero_v2

    q = torch.randn(16, 8, 512, 64, device="cuda")
    k = torch.randn(16, 8, 512, 64, device="cuda")
    v = torch.randn(16, 8, 512, 64, device="cuda")
    output = flash_attention_v2(q, k, v, softmax_scale=None, deterministic=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    assert output.shape == q.shape and output.dtype == q.dtype
    assert max_err(output, ref) < 1e-4

    configs = [
        triton.Config(
            {"BLOCK_Q_ROWS_SIZE": 64, "BLOCK_KV_COLS_SIZE": 64, "SEQUENCE_PARALLEL": sp},
            num_warps=4,
            num_stages=1,
            pre_hook=init_to_zero_v2("DQ"),
        )
        for sp in (False, True)
    ]
    turing = KernelsConfigV2(
        block_rows_size=128, block_cols_size=128, min_block_headdim=16, max_headdim=128,
        seqlen_cache_divisor=32, min_warps=4, max_warps=8, num_stages=1, backward_autotune_configs=configs,
    )
    output = flash_attention_v2_custom(q, k, v, softmax_scale=None, kernels_configs={(7, 5): turing})
    assert max_err(output, ref) < 1e-4
    # The same config forced on this GPU runs too.
    cap = torch.cuda.get_device_capability()
    output = flash_attention_v2_custom(q, k, v, softmax_scale=None, kernels_configs={cap: turing})
    assert max_err(output, ref) < 1e-4


def test_fp32_kernels_reserve_little_local_memory():
    """Register spills make the driver reserve local memory for every resident thread of the GPU (an fp32 forward
    with the 2-byte tiles spilled 32 KB per thread and held 8 GiB per process on an H100). After fp32 forward and
    backward at head dims 64-256 in both modes, every attention kernel compiled in this process must need at most
    4 KB of local memory per thread (about 1 GiB over an H100's resident threads). Read from the driver
    (CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, which Triton reports as n_spills in 4-byte words), not from device memory
    counts, which parallel test workers on the same GPU would disturb."""
    from fa2dist.ops.kernels.backward import _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel
    from fa2dist.ops.kernels.forward import _attn_fwd_kernel

    for d in (64, 128, 256):
        q, k, v = (torch.randn(1, 512, 4, d, device="cuda", dtype=torch.float32, requires_grad=True) for _ in range(3))
        for det in (True, False):
            fa2dist.flash_attention(q, k, v, causal=True, deterministic=det).sum().backward()
    torch.cuda.synchronize()
    local = {}
    for kernel in (_attn_fwd_kernel.fn, _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel):
        for cache in kernel.device_caches.values():
            for compiled in cache[0].values():
                compiled._init_handles()
                local[f"{kernel.__name__} {compiled.metadata.num_warps}w"] = max(
                    local.get(f"{kernel.__name__} {compiled.metadata.num_warps}w", 0), 4 * compiled.n_spills
                )
    print("largest local memory per thread (bytes):", local)
    assert local, "no compiled kernel found"
    assert max(local.values()) <= 4096, f"kernels spill more than 4 KB per thread: {local}"
