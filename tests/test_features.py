"""Attention features on the PyTorch path (CPU, no interpreter): semantics checked against SDPA with explicit masks
and biases, variable length against per-sequence runs, padding masks in the modules, bad arguments, compilation."""

import math

import pytest
import torch
import torch.nn.functional as F

import fa2dist
from fa2dist.ops.reference import window_mask


def _bhsd(b=2, h=4, hk=2, sq=37, sk=53, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, sq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hk, sk, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hk, sk, d, generator=g, dtype=torch.float64)
    return q, k, v


def _sdpa(q, k, v, mask):
    group = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("window", [(5, 0), (7, 3), (-1, 2), (10, -1)])
@pytest.mark.parametrize("sq,sk", [(37, 53), (53, 37)])
def test_window_matches_sdpa_with_a_boolean_mask(window, sq, sk):
    q, k, v = _bhsd(sq=sq, sk=sk)
    out = fa2dist.flash_attention(q.float(), k.float(), v.float(), layout="bhsd", window_size=window)
    mask = window_mask(sq, sk, window)
    visible = mask.any(-1)
    expected = _sdpa(q, k, v, mask)
    # SDPA gives NaN for rows that see no key; fa2dist gives 0 (as flash-attn).
    torch.testing.assert_close(out[:, :, visible].double(), expected[:, :, visible], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:, :, ~visible], torch.zeros_like(out[:, :, ~visible]))


def test_causal_is_the_window_with_right_bound_zero():
    q, k, v = (t.float() for t in _bhsd())
    a = fa2dist.flash_attention(q, k, v, layout="bhsd", causal=True)
    b = fa2dist.flash_attention(q, k, v, layout="bhsd", window_size=(-1, 0))
    c = fa2dist.flash_attention(q, k, v, layout="bhsd", causal=True, window_size=(-1, 9))  # causal wins
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("per_batch", [False, True])
def test_alibi_matches_sdpa_with_a_float_bias(per_batch):
    q, k, v = _bhsd()
    slopes = torch.rand((2, 4) if per_batch else (4,), dtype=torch.float32) + 0.1
    out = fa2dist.flash_attention(q.float(), k.float(), v.float(), layout="bhsd", alibi_slopes=slopes, causal=True)
    i = torch.arange(37)[:, None] + (53 - 37)
    j = torch.arange(53)[None, :]
    bias = -slopes.double()[..., None, None] * (i - j).abs()
    bias = bias.masked_fill(j > i, float("-inf"))
    expected = _sdpa(q, k, v, bias if per_batch else bias[None])
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_softcap_matches_a_plain_implementation():
    q, k, v = _bhsd(hk=4)
    cap = 3.0
    out = fa2dist.flash_attention(q.float(), k.float(), v.float(), layout="bhsd", softcap=cap)
    scores = q @ k.transpose(-1, -2) / math.sqrt(16)
    expected = torch.softmax(cap * torch.tanh(scores / cap), -1) @ v
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    # A large cap is no cap.
    torch.testing.assert_close(
        fa2dist.flash_attention(q.float(), k.float(), v.float(), layout="bhsd", softcap=1e6),
        fa2dist.flash_attention(q.float(), k.float(), v.float(), layout="bhsd"), atol=1e-5, rtol=1e-5,
    )


def test_dropout_on_the_pytorch_path_keeps_the_expectation_and_follows_the_seed():
    q, k, v = (t.float() for t in _bhsd(b=1, h=1, hk=1, sq=8, sk=8, d=16))
    torch.manual_seed(0)
    outs = torch.stack([fa2dist.flash_attention(q, k, v, layout="bhsd", dropout_p=0.5) for _ in range(4000)])
    torch.testing.assert_close(outs.mean(0), fa2dist.flash_attention(q, k, v, layout="bhsd"), atol=0.08, rtol=0)
    torch.manual_seed(3)
    a = fa2dist.flash_attention(q, k, v, layout="bhsd", dropout_p=0.3)
    torch.manual_seed(3)
    assert torch.equal(a, fa2dist.flash_attention(q, k, v, layout="bhsd", dropout_p=0.3))


def test_varlen_matches_per_sequence_dense_calls():
    g = torch.Generator().manual_seed(1)
    lens_q, lens_k = [5, 0, 30, 1], [7, 3, 30, 12]
    cu_q = F.pad(torch.tensor(lens_q).cumsum(0, dtype=torch.int32), (1, 0))
    cu_k = F.pad(torch.tensor(lens_k).cumsum(0, dtype=torch.int32), (1, 0))
    q = torch.randn(sum(lens_q), 4, 16, generator=g, requires_grad=True)
    k = torch.randn(sum(lens_k), 2, 16, generator=g, requires_grad=True)
    v = torch.randn(sum(lens_k), 2, 16, generator=g, requires_grad=True)
    slopes = torch.rand(4, generator=g)
    opts = dict(causal=True, window_size=(4, -1), softcap=5.0, alibi_slopes=slopes)
    out, lse = fa2dist.flash_attention_varlen(q, k, v, cu_q, cu_k, 30, 30, return_lse=True, **opts)
    assert out.shape == q.shape and lse.shape == (4, sum(lens_q))
    for b in range(4):
        sq, eq, sk, ek = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        ref, ref_lse = fa2dist.flash_attention(q[None, sq:eq], k[None, sk:ek], v[None, sk:ek], return_lse=True, **opts)
        torch.testing.assert_close(out[sq:eq], ref[0])
        torch.testing.assert_close(lse[:, sq:eq], ref_lse[0])
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def _varlen_args():
    q = torch.randn(10, 2, 16)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    return q, q.clone(), q.clone(), cu, cu, 6, 6


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(window_size=(3,)), ValueError, ["window_size=(3,)", "(left, right)"]),
        (dict(window_size=(-2, 0)), ValueError, ["window_size", "-1"]),
        (dict(softcap=-1.0), ValueError, ["softcap=-1.0", ">= 0"]),
        (dict(dropout_p=1.0), ValueError, ["dropout_p=1.0", "[0, 1)"]),
        (dict(alibi_slopes=torch.ones(3)), ValueError, ["alibi_slopes", "(nheads,) = (2,)"]),
        (dict(alibi_slopes=torch.ones(2, dtype=torch.float64)), TypeError, ["float32", "alibi_slopes.float()"]),
        (dict(alibi_slopes=[0.5, 0.25]), TypeError, ["torch.Tensor"]),
    ],
)
def test_bad_feature_arguments_name_the_argument(change, error, words):
    q, k, v = (torch.randn(1, 5, 2, 16) for _ in range(3))
    with pytest.raises(error) as info:
        fa2dist.flash_attention(q, k, v, **change)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


@pytest.mark.parametrize(
    "index, value, error, words",
    [
        (0, torch.randn(1, 10, 2, 16), ValueError, ["3-D (total_tokens, nheads, headdim)", "key_padding_mask"]),
        (3, torch.tensor([0, 4, 10]), TypeError, ["cu_seqlens_q", "int32"]),
        (4, torch.tensor([0, 4, 11], dtype=torch.int32), ValueError, ["cu_seqlens_k", "end at most"]),
        (4, torch.tensor([0, 5, 4, 10], dtype=torch.int32), ValueError, ["cu_seqlens_k", "never decrease"]),
        (3, torch.tensor([0, 10], dtype=torch.int32), ValueError, ["same number of sequences"]),
        (3, torch.zeros(65537, dtype=torch.int32), ValueError, ["65536 sequences", "at most 65535"]),
        (5, 6.0, TypeError, ["max_seqlen_q=6.0", "int"]),
    ],
)
def test_bad_varlen_arguments_name_the_argument(index, value, error, words):
    args = list(_varlen_args())
    args[index] = value
    with pytest.raises(error) as info:
        fa2dist.flash_attention_varlen(*args)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_padding_mask_in_the_module_on_the_pytorch_path():
    torch.manual_seed(0)
    attn = fa2dist.FlashAttention(causal=True, layout="bhsd", window_size=(6, -1))
    q, k, v = (torch.randn(2, 4, 20, 16, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, :7] = False  # left padding
    out = attn(q, k, v, attention_mask=mask)
    torch.testing.assert_close(out[0, :, 7:], attn(q[:1, :, 7:], k[:1, :, 7:], v[:1, :, 7:])[0])
    assert torch.equal(out[0, :, :7], torch.zeros_like(out[0, :, :7]))
    torch.testing.assert_close(out[1], attn(q[1:], k[1:], v[1:])[0])
    out.sum().backward()
    assert torch.equal(k.grad[0, :, :7], torch.zeros_like(k.grad[0, :, :7]))
    with pytest.raises(ValueError, match="attention_mask"):
        attn(q, k, v, attention_mask=mask[:, :5])


def test_cross_attention_padding_masks_keys_only():
    attn = fa2dist.FlashAttention()
    q = torch.randn(2, 6, 2, 16)
    k, v = torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:] = False
    out = attn(q, k, v, attention_mask=mask)
    torch.testing.assert_close(out[1], attn(q[1:], k[1:, :4], v[1:, :4])[0])
    torch.testing.assert_close(out[0], attn(q[:1], k[:1], v[:1])[0])


def test_alibi_slopes_are_the_papers():
    assert torch.allclose(fa2dist.alibi_slopes(8), 2.0 ** -torch.arange(1, 9, dtype=torch.float32))
    slopes = fa2dist.alibi_slopes(12)
    assert slopes.shape == (12,) and torch.allclose(slopes[:8], fa2dist.alibi_slopes(8))
    assert torch.allclose(slopes[8:], fa2dist.alibi_slopes(16)[0::2][:4])


def test_module_dropout_only_in_training():
    attn = fa2dist.FlashAttention(dropout=0.5)
    q = torch.randn(1, 8, 2, 16)
    torch.manual_seed(0)
    train = attn(q, q, q)
    attn.eval()
    assert torch.equal(attn(q, q, q), fa2dist.flash_attention(q, q, q))
    assert not torch.equal(train, attn(q, q, q))


def test_fullgraph_compile_with_features_on_the_pytorch_path():
    torch._dynamo.reset()
    block = fa2dist.MultiheadFlashAttention(64, 4, num_kv_heads=2, causal=True, window_size=(5, -1), softcap=4.0,
                                            alibi=True)
    x = torch.randn(2, 20, 64)
    torch.testing.assert_close(torch.compile(block, fullgraph=True, backend="aot_eager")(x), block(x))


def test_sequences_too_long_for_32_bit_offsets_are_refused():
    from fa2dist.ops import attention

    class Strided:  # shape and strides of a tensor too large to allocate here
        def __init__(self, shape, strides):
            self.shape, self._strides = shape, strides

        def stride(self, dim=None):
            return self._strides if dim is None else self._strides[dim]

    q = Strided((1, 600_000, 32, 128), (600_000 * 4096, 4096, 128, 1))
    with pytest.raises(ValueError, match="too long for one sequence.*layout='bhsd'"):
        attention._check_offsets((("q", q),), "bshd", 600_000, 600_000)
    attention._check_offsets((("q", q),), "bshd", 400_000, 400_000)  # 400k x 4096 < 2^31
    packed = Strided((2_000_000, 32, 128), (4096, 128, 1))  # varlen: only the longest sequence counts
    attention._check_offsets((("q", packed),), "thd", 100_000, 100_000)
