"""Attention features on a CUDA GPU (marker ``gpu``): window, softcap, ALiBi, dropout and variable length against
the float64 reference in both backward modes, bitwise repeatability, padding masks, torch.compile and CUDA graphs."""

import pytest
import torch

import fa2dist
from tests.feature_cases import FEATURES, check_dense, check_varlen

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DENSE_SHAPES = [(2, 8, 2, 1000, 1100, 128), (1, 4, 4, 777, 513, 64)]


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,features", FEATURES, ids=[f[0] for f in FEATURES])
def test_dense_features_match_reference(name, features, dtype, deterministic):
    shape = DENSE_SHAPES[[f[0] for f in FEATURES].index(name) % 2]
    check_dense(name, features, shape, dtype, "cuda", deterministic)


@pytest.mark.parametrize("name,features", FEATURES[:3], ids=[f[0] for f in FEATURES[:3]])
def test_dense_features_fp32_and_head_dim_256(name, features):
    check_dense(name, features, (1, 4, 2, 300, 333, 256), torch.bfloat16, "cuda", True)
    check_dense(name, features, (1, 4, 2, 200, 180, 80), torch.float32, "cuda", False)


VARLEN_FEATURES = [("plain", {}), ("causal", dict(causal=True))] + FEATURES


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "seqpar"])
@pytest.mark.parametrize("name,features", VARLEN_FEATURES, ids=[f[0] for f in VARLEN_FEATURES])
def test_varlen_features_match_reference(name, features, deterministic):
    check_varlen(name, features, [1000, 0, 1, 513, 2048, 77], [900, 5, 1, 513, 2048, 300], 8, 2, 128,
                 torch.bfloat16, "cuda", deterministic)


def _qkv(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to("cuda", torch.bfloat16).requires_grad_() for _ in range(3)]


def test_features_deterministic_mode_bitwise_over_five_runs():
    q, k, v = _qkv((2, 2048, 8, 128), 0)
    slopes = fa2dist.alibi_slopes(8).cuda()
    cu = torch.tensor([0, 1000, 1001, 3000, 4096], dtype=torch.int32, device="cuda")
    runs = []
    for _ in range(5):
        torch.manual_seed(1)
        out = fa2dist.flash_attention(q, k, v, causal=True, window_size=(256, -1), softcap=30.0, alibi_slopes=slopes,
                                      dropout_p=0.1, deterministic=True)
        packed = [t.flatten(0, 1) for t in (q, k, v)]
        out_v = fa2dist.flash_attention_varlen(*packed, cu, cu, 1999, 1999, causal=True, deterministic=True)
        loss = out.float().square().sum() + out_v.float().square().sum()
        runs.append((out, out_v, *torch.autograd.grad(loss, (q, k, v))))
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run))


def test_padding_mask_matches_unpadded_samples():
    torch.manual_seed(0)
    block = fa2dist.MultiheadFlashAttention(512, 8, num_kv_heads=2, causal=False, rotary=True).cuda().eval()
    x = torch.randn(3, 300, 512, device="cuda")
    mask = torch.ones(3, 300, dtype=torch.bool, device="cuda")
    mask[1, 170:] = False
    mask[2] = False
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = block(x, mask)
        y1 = block(x[1:2, :170])
        y0 = block(x[:1])
    torch.testing.assert_close(y[1, :170], y1[0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(y[0], y0[0], atol=2e-2, rtol=2e-2)
    assert torch.isfinite(y).all()


def test_inductor_fullgraph_compile_and_cuda_graphs():
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = fa2dist.MultiheadFlashAttention(512, 8, num_kv_heads=2, causal=True, window_size=(128, -1), softcap=20.0,
                                            alibi=True).cuda()
    x = torch.randn(2, 1024, 512, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = block(x)
        compiled = torch.compile(block, fullgraph=True)(x)
        torch.testing.assert_close(compiled, eager, atol=2e-2, rtol=2e-2)
        grads = [torch.autograd.grad(y.float().square().sum(), x)[0] for y in (eager, compiled)]
        torch.testing.assert_close(grads[1], grads[0], atol=5e-2, rtol=5e-2)

    # CUDA graphs (mode="reduce-overhead"), inference: replays match eager, and dropout draws a new mask per replay.
    torch._dynamo.reset()
    block.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        graphed = torch.compile(block, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):
            out = graphed(x).clone()
        torch.testing.assert_close(out, block(x), atol=2e-2, rtol=2e-2)
        block.attn.dropout = 0.2
        block.attn.train()
        torch._dynamo.reset()
        graphed = torch.compile(block, mode="reduce-overhead", fullgraph=True)
        outs = [graphed(x).clone() for _ in range(4)]
    assert all(torch.isfinite(o).all() for o in outs)
    assert not torch.equal(outs[2], outs[3]), "each replay must draw a new dropout mask"


def test_cuda_graph_training_follows_eager_and_repeats_bitwise():
    """Training steps under torch.compile(mode="reduce-overhead"): forward and backward, fa2dist's kernels included,
    replay from CUDA graphs. The losses follow eager training's, and with the deterministic backward two graphed runs
    end with bitwise equal weights."""

    def train(compiled: bool) -> tuple[list[float], list[torch.Tensor]]:
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            fa2dist.MultiheadFlashAttention(256, 4, num_kv_heads=2, causal=True, deterministic=True),
            torch.nn.Linear(256, 256),
        ).cuda()
        step_fn = torch.compile(model, mode="reduce-overhead", fullgraph=True) if compiled else model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator(device="cuda").manual_seed(1)
        batches = [torch.randn(4, 256, 256, device="cuda", generator=g) for _ in range(3)]
        losses = []
        for i in range(8):
            if compiled:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = step_fn(batches[i % 3]).float().square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses, [p.detach().clone() for p in model.parameters()]

    eager, _ = train(False)
    graphed, weights = train(True)
    # The batches cycle (0, 1, 2, 0, ...): the last three steps saw the same batches as the first three.
    assert sum(graphed[-3:]) < sum(graphed[:3]), f"no training progress: {graphed}"
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), atol=1e-3, rtol=2e-2)
    _, again = train(True)
    assert all(torch.equal(a, b) for a, b in zip(weights, again)), "graphed deterministic training is not repeatable"
