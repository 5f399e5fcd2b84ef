"""The Triton kernels under Triton's interpreter (TRITON_INTERPRET=1) against a float64 reference."""

import zlib
from dataclasses import replace

import pytest
import torch
from triton.tools.tensor_descriptor import TensorDescriptor

import fa2dist
from fa2dist.configs import config_for_capability
from fa2dist.ops.attention import INTERPRET
from tests.helpers import check_against_reference, make_qkv, reference_with_grads, to_bhsd

pytestmark = pytest.mark.skipif(not INTERPRET, reason="kernel tests need TRITON_INTERPRET=1 before triton is imported")

# (batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim): awkward sizes on purpose, covering each seqlen in
# {1, 17, 97, 128, 200}, seqlen_q != seqlen_k both ways, head dims {16, 40, 64, 80, 128}, MHA, GQA 4:1 and MQA.
SHAPES = [
    (1, 2, 2, 1, 1, 16),
    (2, 2, 2, 17, 17, 40),
    (1, 4, 1, 97, 97, 64),
    (1, 4, 4, 128, 128, 80),
    (1, 2, 2, 200, 200, 128),
    (1, 4, 1, 1, 200, 40),
    (2, 8, 2, 17, 128, 64),
    (1, 4, 1, 200, 97, 16),
    (1, 2, 2, 128, 17, 80),
    (1, 8, 2, 97, 200, 128),
]


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}h{}-{}q{}k{}d{}".format(*s))
def test_forward_backward_matches_reference(shape, causal, dtype, layout):
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
    seed = zlib.crc32(repr((shape, causal, dtype, layout)).encode())
    q, k, v = make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, dtype, "cpu", layout, seed)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    deterministic = bool(seed % 2)
    out, lse = fa2dist.flash_attention(
        q, k, v, causal=causal, layout=layout, deterministic=deterministic, return_lse=True
    )
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)

    out64, lse64, grads64 = reference_with_grads(q, k, v, do, causal, layout, torch.float64)
    outlp, _, gradslp = reference_with_grads(q, k, v, do, causal, layout, None)
    atol = 1e-6 if dtype == torch.float32 else 1e-5
    check_against_reference("out", to_bhsd(out, layout), out64, outlp, 2, atol)
    assert torch.equal(torch.isinf(lse), torch.isinf(lse64)), "rows that see no key must have lse = +inf"
    finite = torch.isfinite(lse64)
    assert (lse[finite].double() - lse64[finite]).abs().max().item() <= 1e-4 if finite.any() else True
    for name, g, g64, glp in zip(("dq", "dk", "dv"), grads, grads64, gradslp):
        check_against_reference(name, to_bhsd(g, layout), g64, glp, 3, atol)


@pytest.fixture
def tma_config(monkeypatch):
    """The Hopper config (tensor-descriptor forward), with a count of the descriptors the launcher builds."""
    from fa2dist.ops import attention

    built = []

    def spy(*args, **kwargs):
        built.append(args[3] if len(args) > 3 else kwargs["block_shape"])
        return TensorDescriptor(*args, **kwargs)

    monkeypatch.setattr(attention, "TensorDescriptor", spy)
    return replace(config_for_capability((9, 0)), tma=True, atomic_dq=True), built


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES[1:8], ids=lambda s: "b{}h{}-{}q{}k{}d{}".format(*s))
def test_tensor_descriptor_kernels_match_reference(shape, causal, layout, tma_config):
    """Forward and backward with tensor-descriptor loads (the Hopper path): ragged tiles come from the copy
    engine's zero fill and clipped stores, not masks. (The interpreter has no descriptor reductions, so the
    sequence-parallel dQ still adds with pointer atomics here.)"""
    config, built = tma_config
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
    seed = zlib.crc32(repr(("tma", shape, causal, layout)).encode())
    q, k, v = make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, torch.float16, "cpu", layout, seed)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    deterministic = bool(seed % 2)
    out, lse = fa2dist.flash_attention(
        q, k, v, causal=causal, layout=layout, return_lse=True, config=config, deterministic=deterministic
    )
    assert len(built) == 4, "the forward did not take the tensor-descriptor path"
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    # dK/dV reads Q and dO through descriptors; the deterministic dQ pass reads K and V through them.
    assert len(built) == 4 + (4 if deterministic else 2), "the backward did not take the tensor-descriptor path"
    out64, lse64, grads64 = reference_with_grads(q, k, v, do, causal, layout, torch.float64)
    outlp, _, gradslp = reference_with_grads(q, k, v, do, causal, layout, None)
    check_against_reference("out", to_bhsd(out, layout), out64, outlp, 2, 1e-5)
    assert torch.equal(torch.isinf(lse), torch.isinf(lse64)), "rows that see no key must have lse = +inf"
    finite = torch.isfinite(lse64)
    assert (lse[finite].double() - lse64[finite]).abs().max().item() <= 1e-4 if finite.any() else True
    for name, g, g64, glp in zip(("dq", "dk", "dv"), grads, grads64, gradslp):
        check_against_reference(name, to_bhsd(g, layout), g64, glp, 3, 1e-5)


def test_tensor_descriptor_forward_falls_back_where_it_cannot_address(tma_config):
    """fp32, variable length and strides that are not 16-byte multiples run the pointer-load kernel."""
    config, built = tma_config
    q, k, v = make_qkv(1, 2, 2, 33, 33, 64, torch.float32, "cpu", "bshd", seed=3)
    fa2dist.flash_attention(q, k, v, config=config)
    q, k, v = make_qkv(1, 2, 2, 33, 33, 36, torch.float16, "cpu", "bshd", seed=3)  # rows of 72 bytes
    fa2dist.flash_attention(q, k, v, config=config)
    assert built == []
    q, k, v = make_qkv(1, 2, 2, 33, 33, 64, torch.float16, "cpu", "bshd", seed=3)
    fa2dist.flash_attention(q, k, v, config=config)
    assert len(built) == 4


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_bf16_forward_backward(causal):
    """bf16 loads and stores natively; the interpreter's dots run in fp32 (its bf16 tl.dot is broken)."""
    q, k, v = make_qkv(1, 4, 2, 97, 65, 64, torch.bfloat16, "cpu", "bshd", seed=7)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = fa2dist.flash_attention(q, k, v, causal=causal)
    assert out.dtype == torch.bfloat16
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    out64, _, grads64 = reference_with_grads(q, k, v, do, causal, "bshd", torch.float64)
    outlp, _, gradslp = reference_with_grads(q, k, v, do, causal, "bshd", None)
    check_against_reference("out", to_bhsd(out, "bshd"), out64, outlp, 2, 0)
    for name, g, g64, glp in zip(("dq", "dk", "dv"), grads, grads64, gradslp):
        check_against_reference(name, to_bhsd(g, "bshd"), g64, glp, 3, 0)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_deterministic_backward_is_bitwise_repeatable(causal):
    q, k, v = make_qkv(2, 4, 2, 130, 97, 40, torch.float16, "cpu", "bshd", seed=3)
    do = torch.randn(2, 130, 4, 40).half()
    results = []
    for _ in range(3):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fa2dist.flash_attention(*leaves, causal=causal, deterministic=True)
        results.append(torch.autograd.grad(out, leaves, do))
    for later in results[1:]:
        for a, b in zip(results[0], later):
            assert torch.equal(a, b)


def test_sequence_parallel_mode_without_atomics_runs_the_deterministic_kernels():
    """``KernelsConfig(atomic_dq=False)`` (the Hopper config): the sequence-parallel mode gives the deterministic
    mode's gradients, bit for bit."""
    config = replace(config_for_capability((9, 0)), tma=False, warp_specialize=False)
    assert not config.atomic_dq
    q, k, v = make_qkv(1, 4, 2, 97, 130, 64, torch.float16, "cpu", "bshd", seed=7)
    do = torch.randn(1, 97, 4, 64, generator=torch.Generator().manual_seed(8)).half()
    grads = {}
    for det, cfg in ((True, config), (False, config), (False, replace(config, atomic_dq=True))):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fa2dist.flash_attention(*leaves, causal=True, deterministic=det, config=cfg)
        grads[det, cfg.atomic_dq] = torch.autograd.grad(out, leaves, do)
    for a, b, c in zip(grads[True, False], grads[False, False], grads[False, True]):
        assert torch.equal(a, b)
        torch.testing.assert_close(a.float(), c.float(), atol=2e-3, rtol=2e-3)


def test_modes_agree_and_strided_inputs_need_no_copy():
    """A (batch, seq, heads, dim) view of a packed qkv tensor runs as is, in both modes, with the same result."""
    g = torch.Generator().manual_seed(11)
    qkv = torch.randn(2, 77, 3, 4, 32, generator=g).half()
    q, k, v = qkv.unbind(dim=2)
    assert not q.is_contiguous()
    outs = []
    for det in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fa2dist.flash_attention(*leaves, causal=True, deterministic=det)
        outs.append((out, *torch.autograd.grad(out.float().sum(), leaves)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=2e-3)


def test_seed_api_matches_causal_bhsd():
    q, k, v = make_qkv(1, 2, 2, 64, 64, 32, torch.float16, "cpu", "bhsd", seed=5)
    a = fa2dist.flash_attention_v2(q, k, v)
    b = fa2dist.flash_attention(q, k, v, causal=True, layout="bhsd")
    assert a.dtype == torch.float16 and torch.equal(a, b)


def test_nan_propagates():
    q, k, v = make_qkv(1, 2, 2, 33, 33, 16, torch.float32, "cpu", "bhsd", seed=9)
    q[0, 0, 5, 3] = float("nan")
    out = fa2dist.flash_attention(q, k, v, layout="bhsd")
    assert torch.isnan(out[0, 0, 5]).all()
    assert not torch.isnan(out[0, 1]).any() and not torch.isnan(out[0, 0, 6:]).any()
