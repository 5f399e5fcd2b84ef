"""The deterministic switch: its precedence, its errors, Lightning's ``Trainer(deterministic=...)``, and that the mode
it resolves is the one the backward kernels are launched in (functional API, modules, seed API)."""

from __future__ import annotations

import os
import threading

import pytest
import torch

import fa2dist
from fa2dist.determinism import ENV_VAR, resolve_deterministic
from fa2dist.ops import attention
from fa2dist.ops.reference import attention_reference


@pytest.fixture(autouse=True)
def clean_switch(monkeypatch):
    """Every test starts with nothing set and leaves torch's and fa2dist's global state as it found it."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    torch.use_deterministic_algorithms(False)
    fa2dist.set_deterministic(None)
    yield
    fa2dist.set_deterministic(None)
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def test_off_when_nothing_is_set():
    assert resolve_deterministic() == (False, "default")
    assert fa2dist.is_deterministic() is False


@pytest.mark.parametrize("warn_only", [False, True])
def test_torch_deterministic_algorithms_turn_it_on(warn_only):
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    mode, source = resolve_deterministic()
    assert mode is True
    assert source.startswith("torch.use_deterministic_algorithms(True")
    assert ("warn_only" in source) == warn_only


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        (" YES ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_environment_values(monkeypatch, raw, expected):
    # The torch flag is set to the opposite, so the result shows the environment outranked it.
    torch.use_deterministic_algorithms(not expected)
    monkeypatch.setenv(ENV_VAR, raw)
    assert resolve_deterministic() == (expected, f"environment {ENV_VAR}")


def test_empty_environment_value_counts_as_unset(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "  ")
    torch.use_deterministic_algorithms(True)
    assert resolve_deterministic() == (True, "torch.use_deterministic_algorithms(True)")


def test_precedence_chain(monkeypatch):
    """All five sources set, each to the opposite of the one below it; removing them from the top down must hand the
    decision to the next one each time."""
    torch.use_deterministic_algorithms(True)
    monkeypatch.setenv(ENV_VAR, "0")
    fa2dist.set_deterministic(True)
    with fa2dist.deterministic(False):
        assert resolve_deterministic(True) == (True, "argument")
        assert resolve_deterministic(None) == (False, "fa2dist.deterministic() context")
    assert resolve_deterministic() == (True, "fa2dist.set_deterministic()")
    fa2dist.set_deterministic(None)
    assert resolve_deterministic() == (False, f"environment {ENV_VAR}")
    monkeypatch.delenv(ENV_VAR)
    assert resolve_deterministic() == (True, "torch.use_deterministic_algorithms(True)")
    torch.use_deterministic_algorithms(False)
    assert resolve_deterministic() == (False, "default")


def test_argument_outranks_everything(monkeypatch):
    torch.use_deterministic_algorithms(True)
    monkeypatch.setenv(ENV_VAR, "1")
    fa2dist.set_deterministic(True)
    with fa2dist.deterministic(True):
        assert resolve_deterministic(False) == (False, "argument")


def test_nested_contexts_innermost_wins_and_unwind():
    fa2dist.set_deterministic(False)
    with fa2dist.deterministic(True):
        assert fa2dist.is_deterministic()
        with fa2dist.deterministic(False):
            assert not fa2dist.is_deterministic()
        assert fa2dist.is_deterministic()
    assert resolve_deterministic() == (False, "fa2dist.set_deterministic()")


def test_context_is_restored_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"), fa2dist.deterministic(True):
        raise RuntimeError("boom")
    assert resolve_deterministic() == (False, "default")


def test_context_default_is_on():
    with fa2dist.deterministic():
        assert fa2dist.is_deterministic()


def test_set_deterministic_is_process_wide_and_the_context_is_not():
    """The context manager is a ContextVar: it covers the current thread (or asyncio task); set_deterministic covers
    every thread."""
    seen = {}

    def probe(key):
        seen[key] = fa2dist.is_deterministic()

    with fa2dist.deterministic(True):
        thread = threading.Thread(target=probe, args=("context",))
        thread.start()
        thread.join()
    fa2dist.set_deterministic(True)
    thread = threading.Thread(target=probe, args=("global",))
    thread.start()
    thread.join()
    assert seen == {"context": False, "global": True}


@pytest.mark.parametrize("bad", [1, 0, "true", "1", 1.0])
def test_bad_values_raise_type_errors_naming_the_call(bad):
    with pytest.raises(TypeError, match=r"fa2dist\.set_deterministic\(.*True, False or None"):
        fa2dist.set_deterministic(bad)
    with pytest.raises(TypeError, match=r"fa2dist\.deterministic\(.*True or False"):
        with fa2dist.deterministic(bad):
            pass
    with pytest.raises(TypeError, match=r"`deterministic=.*True or False"):
        resolve_deterministic(bad)
    q = torch.randn(1, 8, 1, 16)
    with pytest.raises(TypeError, match=r"`deterministic="):
        fa2dist.flash_attention(q, q, q, deterministic=bad)
    assert resolve_deterministic() == (False, "default"), "a rejected value must not change the state"


def test_context_rejects_none():
    with pytest.raises(TypeError, match="True or False"):
        with fa2dist.deterministic(None):
            pass


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=rf"{ENV_VAR}='maybe'.*0 or 1"):
        fa2dist.is_deterministic()
    # A higher-ranked source decides without reading the environment.
    fa2dist.set_deterministic(True)
    assert fa2dist.is_deterministic()


# --- Lightning ---------------------------------------------------------------------------------------------------


def _trainer(**kwargs):
    from lightning.pytorch import Trainer

    return Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, **kwargs
    )


@pytest.mark.filterwarnings("ignore:The `srun` command is available")
@pytest.mark.parametrize(
    ("flag", "expected", "source"),
    [
        (True, True, "torch.use_deterministic_algorithms(True)"),
        ("warn", True, "torch.use_deterministic_algorithms(True, warn_only=True)"),
        (False, False, "default"),
    ],
)
def test_lightning_trainer_deterministic_sets_the_switch(flag, expected, source):
    _trainer(deterministic=flag)
    assert resolve_deterministic() == (expected, source)


@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_lightning_trainer_deterministic_is_outranked_by_fa2dist_settings(monkeypatch):
    _trainer(deterministic=True)
    assert fa2dist.is_deterministic()
    monkeypatch.setenv(ENV_VAR, "0")
    assert not fa2dist.is_deterministic()
    monkeypatch.delenv(ENV_VAR)
    fa2dist.set_deterministic(False)
    assert not fa2dist.is_deterministic()


# --- the mode reaches the backward -------------------------------------------------------------------------------


def _bhsd(t, layout):
    return t if layout == "bhsd" else t.transpose(1, 2)


@pytest.fixture
def backward_modes(monkeypatch):
    """Route CPU tensors through the kernel path (FlashAttnFunction) with the launchers replaced by the PyTorch
    reference, and record the ``deterministic`` argument of every backward launch."""
    modes: list[bool] = []

    def fake_fwd(q, k, v, feats, layout, config, **_):
        out, lse = attention_reference(
            _bhsd(q, layout), _bhsd(k, layout), _bhsd(v, layout), softmax_scale=feats.softmax_scale,
            window_size=(feats.window_left, feats.window_right),
        )
        return _bhsd(out, layout), lse

    def fake_bwd(do, q, k, v, out, lse, feats, layout, config, deterministic, **_):
        modes.append(deterministic)
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            o, _ = fake_fwd(*leaves, feats, layout, config)
            return torch.autograd.grad(o, leaves, do)

    monkeypatch.setattr(attention, "uses_kernels", lambda device: True)
    monkeypatch.setattr(attention, "attn_fwd", fake_fwd)
    monkeypatch.setattr(attention, "attn_bwd", fake_bwd)
    return modes


def _qkv(layout="bshd", seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 24, 2, 16) if layout == "bshd" else (2, 2, 24, 16)
    return [torch.randn(shape, generator=g, requires_grad=True) for _ in range(3)]


def _backward(fn, *tensors):
    fn(*tensors).float().square().sum().backward()


@pytest.mark.parametrize("global_flag", [True, False])
def test_functional_api_follows_set_deterministic(backward_modes, global_flag):
    fa2dist.set_deterministic(global_flag)
    _backward(fa2dist.flash_attention, *_qkv())
    assert backward_modes == [global_flag]


def test_functional_api_follows_torch_flag_and_environment(backward_modes, monkeypatch):
    torch.use_deterministic_algorithms(True)
    _backward(fa2dist.flash_attention, *_qkv())
    monkeypatch.setenv(ENV_VAR, "0")
    _backward(fa2dist.flash_attention, *_qkv())
    assert backward_modes == [True, False]


def test_functional_argument_outranks_context(backward_modes):
    with fa2dist.deterministic(True):
        _backward(lambda q, k, v: fa2dist.flash_attention(q, k, v, deterministic=False), *_qkv())
        _backward(fa2dist.flash_attention, *_qkv())
    assert backward_modes == [False, True]


def test_mode_is_fixed_when_the_forward_runs(backward_modes):
    """The backward runs where no user context is active (Lightning calls it; autograd may use its own threads), so
    the forward's mode must be the one used."""
    with fa2dist.deterministic(True):
        out = fa2dist.flash_attention(*_qkv())
    out.sum().backward()
    out = fa2dist.flash_attention(*_qkv())
    with fa2dist.deterministic(True):
        out.sum().backward()
    assert backward_modes == [True, False]


def test_gradients_are_the_reference_ones(backward_modes):
    """The fake launchers must not hide a broken autograd wiring: gradients equal the reference's."""
    q, k, v = _qkv()
    fa2dist.flash_attention(q, k, v, causal=True).sum().backward()
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, _ = attention_reference(*(t.transpose(1, 2) for t in leaves), causal=True)
    out.sum().backward()
    for a, b in zip((q, k, v), leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    assert backward_modes == [False]


def test_flash_attention_module(backward_modes):
    q, k, v = _qkv()
    follows = fa2dist.FlashAttention(causal=True)
    pinned = fa2dist.FlashAttention(causal=True, deterministic=False)
    with fa2dist.deterministic(True):
        _backward(follows, q, k, v)
        _backward(pinned, q, k, v)
    fa2dist.set_deterministic(False)
    _backward(follows, q, k, v)
    assert backward_modes == [True, False, False]


def test_multihead_module(backward_modes):
    torch.manual_seed(0)
    follows = fa2dist.MultiheadFlashAttention(32, 2, causal=True, rotary=True)
    pinned = fa2dist.MultiheadFlashAttention(32, 2, num_kv_heads=1, deterministic=True)
    x = torch.randn(2, 24, 32)
    fa2dist.set_deterministic(False)
    _backward(follows, x)
    _backward(pinned, x)
    torch.use_deterministic_algorithms(True)
    fa2dist.set_deterministic(None)
    _backward(follows, x)
    assert backward_modes == [False, True, True]


def test_seed_api_argument(backward_modes):
    """deterministic=True always wins; the seed's default False defers to the switch, so a reproducible run stays
    reproducible through seed-API code, and with nothing set it is the seed's sequence-parallel backward."""
    q, k, v = _qkv("bhsd")
    fa2dist.set_deterministic(False)
    _backward(lambda q, k, v: fa2dist.flash_attention_v2(q, k, v, deterministic=True), q, k, v)
    _backward(lambda q, k, v: fa2dist.flash_attention_v2(q, k, v), q, k, v)
    with fa2dist.deterministic(True):
        _backward(lambda q, k, v: fa2dist.flash_attention_v2(q, k, v, deterministic=False), q, k, v)
    fa2dist.set_deterministic(None)
    _backward(lambda q, k, v: fa2dist.flash_attention_v2(q, k, v), q, k, v)
    assert backward_modes == [True, False, True, False]


def test_seed_api_custom_configs_follow_the_switch(backward_modes):
    q, k, v = _qkv("bhsd")
    with fa2dist.deterministic(True):
        _backward(lambda q, k, v: fa2dist.flash_attention_v2_custom(q, k, v, None, {}), q, k, v)
    _backward(lambda q, k, v: fa2dist.flash_attention_v2_custom(q, k, v, None, {}), q, k, v)
    assert backward_modes == [True, False]
