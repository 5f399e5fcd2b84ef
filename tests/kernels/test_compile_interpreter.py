"""torch.compile(fullgraph=True) over the Triton kernels (interpreted on the CPU): no graph break, same results."""

import pytest
import torch

import fa2dist
from fa2dist.ops.attention import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="kernel tests need TRITON_INTERPRET=1 before triton is imported")


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
def test_fullgraph_compile_matches_eager(deterministic):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 33, 4, 32, generator=g).half()
    k = torch.randn(2, 47, 2, 32, generator=g).half()
    v = torch.randn(2, 47, 2, 32, generator=g).half()

    def step(q, k, v):
        out, lse = fa2dist.flash_attention(q, k, v, causal=True, deterministic=deterministic, return_lse=True)
        return (out.float() * out.float()).sum() + lse[torch.isfinite(lse)].sum()

    grads = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        loss = fn(*leaves)
        grads.append((loss.detach(), *torch.autograd.grad(loss, leaves)))
    for eager, compiled in zip(*grads):
        assert torch.equal(eager, compiled)


def test_compiled_module_uses_the_ops():
    torch._dynamo.reset()
    block = fa2dist.MultiheadFlashAttention(64, 4, num_kv_heads=2, causal=True, rotary=True)
    x = torch.randn(2, 20, 64)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(block, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(x), block(x))
    assert any("fa2dist.attn_fwd" in str(gm.graph) for gm in graphs)


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
def test_fullgraph_compile_with_features_matches_eager(deterministic):
    """Window, softcap, ALiBi and dropout (its seed drawn inside the op) compile without a graph break."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 40, 4, 32, generator=g).half() for _ in range(3))
    slopes = torch.rand(4, generator=g)

    def step(q, k, v):
        out = fa2dist.flash_attention(q, k, v, causal=True, window_size=(9, -1), softcap=6.0, alibi_slopes=slopes,
                                      dropout_p=0.2, deterministic=deterministic)
        return (out.float() * out.float()).sum()

    results = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.manual_seed(0)
        loss = fn(*leaves)
        results.append((loss.detach(), *torch.autograd.grad(loss, leaves)))
    for eager, compiled in zip(*results):
        assert torch.equal(eager, compiled)


def test_fullgraph_compile_varlen_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    cu = torch.tensor([0, 13, 13, 50], dtype=torch.int32)
    q, k, v = (torch.randn(50, 2, 16, generator=g).half() for _ in range(3))

    def step(q, k, v):
        out = fa2dist.flash_attention_varlen(q, k, v, cu, cu, 37, 37, causal=True, deterministic=True)
        return (out.float() * out.float()).sum()

    results = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        loss = fn(*leaves)
        results.append((loss.detach(), *torch.autograd.grad(loss, leaves)))
    for eager, compiled in zip(*results):
        assert torch.equal(eager, compiled)
