"""Attention features in the Triton kernels under the interpreter, against the float64 reference: every feature
and combinations, both backward modes, dense and variable-length; the dropout mask's properties."""

from dataclasses import replace

import pytest
import torch
from triton.tools.tensor_descriptor import TensorDescriptor

import fa2dist
from fa2dist.configs import config_for_capability
from fa2dist.ops.attention import INTERPRET, dropout_mask, new_seed
from tests.feature_cases import FEATURES, check_dense, check_varlen

pytestmark = pytest.mark.skipif(not INTERPRET, reason="kernel tests need TRITON_INTERPRET=1 before triton is imported")

# Awkward sizes: GQA, seqlen_q != seqlen_k both ways, ragged tiles, head dims that are not powers of two.
DENSE_SHAPES = [(2, 4, 2, 67, 45, 40), (1, 2, 1, 33, 130, 64)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("name,features", FEATURES, ids=[f[0] for f in FEATURES])
def test_dense_features_match_reference(name, features, dtype):
    index = [f[0] for f in FEATURES].index(name)
    shape = DENSE_SHAPES[index % 2]
    # Alternate the backward modes over the matrix: each feature meets both modes across the two dtypes.
    deterministic = (index + (dtype == torch.float16)) % 2 == 0
    check_dense(name, features, shape, dtype, "cpu", deterministic)


@pytest.mark.parametrize(
    "name,features", [f for f in FEATURES if f[0] in ("window-both", "softcap", "alibi-batch-causal", "all")],
    ids=lambda f: f if isinstance(f, str) else "",
)
def test_dense_features_with_tensor_descriptors(name, features, monkeypatch):
    """The same checks through the Hopper kernels (tensor-descriptor loads), deterministic mode."""
    from fa2dist.ops import attention

    built = []
    monkeypatch.setattr(attention, "TensorDescriptor", lambda *a: built.append(a) or TensorDescriptor(*a))
    config = replace(config_for_capability((9, 0)), tma=True)
    check_dense(name, features, DENSE_SHAPES[0], torch.float16, "cpu", True, config=config)
    assert len(built) == 8, "forward, dK/dV and dQ must each build their tensor descriptors"


VARLEN_FEATURES = [("plain", {}), ("causal", dict(causal=True))] + [
    f for f in FEATURES if f[0] in ("window-both", "alibi-batch-causal", "dropout", "all")
]


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
@pytest.mark.parametrize("name,features", VARLEN_FEATURES, ids=[f[0] for f in VARLEN_FEATURES])
def test_varlen_features_match_reference(name, features, deterministic):
    # Sequences of length 0, 1, shorter and longer keys than queries, and more than one tile.
    check_varlen(name, features, [5, 0, 70, 1, 33], [9, 4, 64, 1, 40], 4, 2, 40, torch.float16, "cpu", deterministic)


def test_varlen_bf16_and_mqa():
    check_varlen("bf16", dict(causal=True), [17, 40], [17, 40], 4, 1, 32, torch.bfloat16, "cpu", True)


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
def test_varlen_tokens_past_the_last_sequence_are_zero(deterministic, monkeypatch):
    # Deterministic algorithms fill torch.empty with NaN: a slot the kernels never write would show.
    torch.use_deterministic_algorithms(True)
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    try:
        _check_past_the_last_sequence(deterministic)
    finally:
        torch.use_deterministic_algorithms(False)


def _check_past_the_last_sequence(deterministic):
    g = torch.Generator().manual_seed(4)
    cu = torch.tensor([0, 7, 20], dtype=torch.int32)
    q, k, v = (torch.randn(25, 2, 16, generator=g).half().requires_grad_() for _ in range(3))
    out, lse = fa2dist.flash_attention_varlen(q, k, v, cu, cu, 13, 13, deterministic=deterministic, return_lse=True)
    assert torch.equal(out[20:], torch.zeros_like(out[20:])) and torch.isinf(lse[:, 20:]).all()
    for grad in torch.autograd.grad(out.float().square().sum(), (q, k, v)):
        assert torch.isfinite(grad).all() and torch.equal(grad[20:], torch.zeros_like(grad[20:]))


def test_dropout_mask_statistics_and_seeds():
    p = 0.3
    torch.manual_seed(0)
    seed = new_seed(torch.device("cpu"))
    mask = dropout_mask(seed, 2, 3, 64, 96, p)
    assert abs(mask.float().mean().item() - (1 - p)) < 0.02
    assert torch.equal(mask, dropout_mask(seed, 2, 3, 64, 96, p)), "the mask is a function of the seed"
    other = dropout_mask(seed + 1, 2, 3, 64, 96, p)
    assert (mask != other).float().mean().item() > 0.3, "another seed gives another mask"
    assert (mask[0, 0] != mask[0, 1]).any() and (mask[0] != mask[1]).any(), "heads and batches get their own masks"
    # A mask for a smaller problem is the top-left corner of a larger one: independent of shapes and tiles.
    assert torch.equal(dropout_mask(seed, 2, 3, 10, 20, p), mask[:, :, :10, :20])


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
def test_dropout_is_reproducible_given_the_torch_seed(deterministic):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 50, 2, 32, generator=g).half().requires_grad_() for _ in range(3))
    runs = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        out = fa2dist.flash_attention(q, k, v, dropout_p=0.2, causal=True, deterministic=deterministic)
        runs.append((out, *torch.autograd.grad(out.float().square().sum(), (q, k, v))))
    assert torch.equal(runs[0][0], runs[1][0])
    if deterministic:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
def test_rows_outside_every_window_are_zero_with_finite_grads(deterministic):
    # seqlen_q > seqlen_k with a causal window: the first rows see no key at all.
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, 40, 16, generator=g).half().requires_grad_()
    k, v = (torch.randn(1, 2, 20, 16, generator=g).half().requires_grad_() for _ in range(2))
    out, lse = fa2dist.flash_attention(q, k, v, layout="bhsd", causal=True, window_size=(3, -1), softcap=4.0,
                                       alibi_slopes=torch.full((2,), 0.5), deterministic=deterministic,
                                       return_lse=True)
    assert torch.equal(out[:, :, :20], torch.zeros_like(out[:, :, :20]))
    assert torch.isinf(lse[:, :, :20]).all() and torch.isfinite(lse[:, :, 20:]).all()
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    assert all(torch.isfinite(t).all() for t in grads)
    assert torch.equal(grads[0][:, :, :20], torch.zeros_like(grads[0][:, :, :20]))


def test_window_of_one_key_returns_that_value():
    # window (0, 0) with seqlen_q == seqlen_k: row i sees key i alone, so the output is v itself (and dS is zero up
    # to the rounding of rowsum(dO * O), which is why this case is not in the relative-error matrix).
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 37, 2, 32, generator=g).requires_grad_() for _ in range(3))
    out = fa2dist.flash_attention(q, k, v, window_size=(0, 0))
    torch.testing.assert_close(out, v, atol=1e-6, rtol=0)
    dq, dk, dv = torch.autograd.grad(out.square().sum(), (q, k, v))
    torch.testing.assert_close(dv, 2 * v.detach(), atol=1e-5, rtol=0)
    assert dq.abs().max() < 1e-4 and dk.abs().max() < 1e-4


def test_padding_mask_module_matches_unpadded_runs():
    torch.manual_seed(0)
    block = fa2dist.MultiheadFlashAttention(64, 4, num_kv_heads=2, causal=True, alibi=True).eval()
    x = torch.randn(3, 24, 64)
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[1, 15:] = False
    mask[2] = False
    y = block(x, mask)
    torch.testing.assert_close(y[1, :15], block(x[1:2, :15])[0], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(y[0], block(x[:1])[0], atol=2e-6, rtol=1e-5)
    assert torch.equal(y[2], block.out_proj.bias.expand(24, 64))
