"""The public API on the PyTorch path: bad input messages, empty inputs, semantics shared with the kernels."""

import pytest
import torch

import fa2dist
from fa2dist.ops.reference import attention_reference, causal_mask


def qkv(b=1, s=8, h=2, hk=2, d=16, dtype=torch.float32, sk=None):
    g = torch.Generator().manual_seed(0)
    sk = s if sk is None else sk
    return (
        torch.randn(b, s, h, d, generator=g).to(dtype),
        torch.randn(b, sk, hk, d, generator=g).to(dtype),
        torch.randn(b, sk, hk, d, generator=g).to(dtype),
    )


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: (torch.randn(2, 8, 16), *qkv()[1:]), ValueError, ["`q` must be 4-D", "(batch, seqlen, nheads, headdim)"]),
        (lambda: (qkv()[0], torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 16)), ValueError, ["same batch size"]),
        (lambda: (qkv()[0], torch.randn(1, 8, 2, 32), torch.randn(1, 8, 2, 32)), ValueError, ["same head dim"]),
        (lambda: (qkv()[0], qkv()[1], torch.randn(1, 9, 2, 16)), ValueError, ["`k` and `v` must have the same shape"]),
        (lambda: qkv(h=3, hk=2), ValueError, ["multiple of nheads of k/v", "(3)", "(2)"]),
        (lambda: tuple(t.long() for t in qkv()), TypeError, ["dtype torch.int64", "float16, bfloat16 and float32"]),
        (lambda: tuple(t.double() for t in qkv()), TypeError, ["dtype torch.float64"]),
        (lambda: (qkv()[0].half(), *qkv()[1:]), TypeError, ["share a dtype", "q=torch.float16"]),
        (lambda: (qkv()[0], qkv()[1].to("meta"), qkv()[2]), ValueError, ["one device", "k=meta"]),
        (lambda: qkv(d=264), ValueError, ["head dim 264", "16-256"]),
        (lambda: qkv(d=8), ValueError, ["head dim 8"]),
        (lambda: qkv(b=65536, s=1, h=1, hk=1), ValueError, ["batch 65536", "at most 65535", "split the batch"]),
        (lambda: ([[1.0]], *qkv()[1:]), TypeError, ["`q` must be a torch.Tensor"]),
    ],
)
def test_bad_inputs_name_the_argument_and_the_fix(make, error, words):
    q, k, v = make()
    with pytest.raises(error) as info:
        fa2dist.flash_attention(q, k, v)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_bad_options():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="layout='sbhd'"):
        fa2dist.flash_attention(q, k, v, layout="sbhd")
    with pytest.raises(TypeError, match="causal=1"):
        fa2dist.flash_attention(q, k, v, causal=1)
    with pytest.raises(TypeError, match="softmax_scale"):
        fa2dist.flash_attention(q, k, v, softmax_scale=float("nan"))
    with pytest.raises(TypeError, match="deterministic"):
        fa2dist.flash_attention(q, k, v, deterministic="yes")


@pytest.mark.parametrize("shape", [(0, 8, 2, 16), (1, 0, 2, 16)])
def test_empty_batch_or_sequence_returns_empty(shape):
    q = torch.randn(shape, requires_grad=True)
    k = torch.randn(shape, requires_grad=True)
    out = fa2dist.flash_attention(q, k, k, causal=True)
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_no_keys_gives_zero_output():
    q = torch.randn(1, 5, 2, 16)
    k = torch.randn(1, 0, 2, 16)
    out, lse = fa2dist.flash_attention(q, k, k, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isinf(lse).all()


def test_causal_mask_is_bottom_right_aligned():
    assert causal_mask(2, 5).tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert causal_mask(5, 3).tolist()[:2] == [[False] * 3, [False] * 3]
    assert causal_mask(5, 3).tolist()[4] == [True] * 3


def test_cpu_path_matches_sdpa_with_gqa_and_layouts():
    q, k, v = qkv(b=2, s=33, h=8, hk=2, d=40, sk=33)
    out = fa2dist.flash_attention(q, k, v, causal=True)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out_bhsd = fa2dist.flash_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, layout="bhsd")
    torch.testing.assert_close(out_bhsd.transpose(1, 2), out, atol=0, rtol=0)


def test_fully_masked_rows_have_zero_output_and_finite_grads():
    q, k, v = (t.requires_grad_() for t in qkv(s=7, sk=3))
    out, lse = fa2dist.flash_attention(q, k, v, causal=True, return_lse=True)
    assert torch.equal(out[:, :4], torch.zeros_like(out[:, :4]))
    assert torch.isinf(lse[:, :, :4]).all() and torch.isfinite(lse[:, :, 4:]).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_nan_propagates_like_sdpa():
    q, k, v = qkv()
    q[0, 3, 1, 0] = float("nan")
    out = fa2dist.flash_attention(q, k, v)
    assert torch.isnan(out[0, 3, 1]).all() and not torch.isnan(out[0, :, 0]).any()


def test_reference_lse_matches_logsumexp():
    q, k, v = qkv(s=9)
    _, lse = attention_reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    scores = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / 4.0
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1))


def test_seed_api_signatures_and_errors():
    import inspect

    assert list(inspect.signature(fa2dist.flash_attention_v2).parameters) == [
        "q", "k", "v", "softmax_scale", "deterministic"
    ]
    assert list(inspect.signature(fa2dist.flash_attention_v2_custom).parameters) == [
        "q", "k", "v", "softmax_scale", "kernels_configs"
    ]
    q, k, v = (t.transpose(1, 2) for t in qkv())
    out = fa2dist.flash_attention_v2(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="kernels_configs"):
        fa2dist.flash_attention_v2_custom(q, k, v, None, kernels_configs=[1])
    hook = fa2dist.init_to_zero_v2("DQ")
    t = torch.ones(3)
    assert hook({"DQ": t}) is t and torch.equal(t, torch.zeros(3))


def test_kernels_config_v2_converts_and_validates():
    cfg = fa2dist.KernelsConfigV2(
        block_rows_size=128, block_cols_size=128, min_block_headdim=16, max_headdim=128,
        seqlen_cache_divisor=32, min_warps=4, max_warps=8, num_stages=1, backward_autotune_configs=[],
    )
    kc = cfg.to_kernels_config()
    assert kc.forward_for(64).num_warps == 4 and kc.forward_for(128).num_warps == 8
    with pytest.raises(ValueError, match="block_m=96"):
        fa2dist.KernelsConfigV2(96, 128, 16, 128, 32, 4, 8, 1, [])
    with pytest.raises(ValueError, match="min_warps"):
        fa2dist.KernelsConfigV2(128, 128, 16, 128, 32, 8, 4, 1, [])


def test_bf16_is_not_cast_on_cpu():
    q, k, v = qkv(dtype=torch.bfloat16)
    q = q * 300  # fp16 would overflow in q @ k^T
    out = fa2dist.flash_attention(q, k, v)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_fullgraph_compile_on_the_pytorch_path():
    torch._dynamo.reset()
    block = fa2dist.MultiheadFlashAttention(64, 4, num_kv_heads=2, causal=True, rotary=True)
    x = torch.randn(2, 20, 64, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, block(x))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
