"""Kernel configs: the registry, selection per device, overrides, and shared-memory fitting.

The fit tests cross-compile every registered family's kernels with Triton for that family's own architecture
(sm_75 ... sm_120, no GPU needed) and compare the shared memory Triton allocates with what the family's GPUs have.
Devices are faked by replacing ``torch.cuda.get_device_properties``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import types
import warnings

import pytest
import torch
import triton

from fa2dist import configs
from fa2dist.compat import KernelsConfigV2
from fa2dist.configs import (
    ENV_ARCH,
    FAMILIES,
    FAMILY_SHARED_MEMORY,
    INTERPRETER_CONFIG,
    BackwardConfig,
    BlockConfig,
    KernelsConfig,
    config_for_device,
    register_config,
    select_config,
    unregister_configs,
)
from fa2dist.ops import fit

# Each family's own architecture, and a GPU of it as PyTorch describes it (shared_memory_per_block_optin).
FAMILY_CAPABILITY = {
    "turing": (7, 5),
    "ampere": (8, 0),
    "ampere_consumer": (8, 6),
    "ada": (8, 9),
    "hopper": (9, 0),
    "blackwell": (10, 0),
    "blackwell_consumer": (12, 0),
}
FAKE_GPUS = {
    "Tesla T4": ((7, 5), 65536, "turing"),
    "NVIDIA A100-SXM4-80GB": ((8, 0), 166912, "ampere"),
    "NVIDIA GeForce RTX 3090": ((8, 6), 101376, "ampere_consumer"),
    "NVIDIA Jetson AGX Orin": ((8, 7), 166912, "ampere_consumer"),
    "NVIDIA L40S": ((8, 9), 101376, "ada"),
    "NVIDIA H100 80GB HBM3": ((9, 0), 232448, "hopper"),
    "NVIDIA B200": ((10, 0), 232448, "blackwell"),
    "NVIDIA B300": ((10, 3), 232448, "blackwell"),
    "NVIDIA GeForce RTX 5090": ((12, 0), 101376, "blackwell_consumer"),
    "NVIDIA DGX Spark": ((12, 1), 101376, "blackwell_consumer"),
}
HEAD_DIMS = (16, 40, 64, 80, 96, 128, 256)

needs_compiler = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="cross-compilation needs Triton's compiler, not its interpreter"
)


def _kernel_blocks(config: KernelsConfig, head_dim: int) -> dict[str, BlockConfig | None]:
    det = config.backward_for(head_dim, True)
    return {
        "forward": config.forward_for(head_dim),
        "dkdv": det.dkdv,
        "dq": det.dq,
        "dkdv_atomic": config.backward_for(head_dim, False).dkdv,
        "preprocess": None,
    }


def _props(name: str, capability: tuple[int, int], smem: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        name=name,
        major=capability[0],
        minor=capability[1],
        shared_memory_per_block_optin=smem,
        multi_processor_count=108,
        total_memory=16 << 30,
    )


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus({0: (name, capability, smem), ...})`` makes those the visible CUDA devices for configs."""
    monkeypatch.setattr(configs, "_warned", set())
    monkeypatch.delenv(ENV_ARCH, raising=False)

    def install(table: dict[int, tuple[str, tuple[int, int], int]]) -> None:
        props = {i: _props(*entry) for i, entry in table.items()}
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        configs.clear_caches()

    yield install
    unregister_configs()
    configs.clear_caches()


def _gpu(name: str) -> tuple[str, tuple[int, int], int]:
    capability, smem, _ = FAKE_GPUS[name]
    return (name, capability, smem)


# ---- every registered tier cross-compiled for its own architecture --------------------------------------------------


@needs_compiler
@pytest.mark.parametrize("family", sorted(FAMILY_CAPABILITY))
def test_family_tiles_compile_and_fit_their_architecture(family):
    """All kernels of all backward modes, head dims up to the family's limit, fp16 causal (the shape Triton
    specialises: strides multiples of 16 where the head dim is), plus bf16 and non-causal at two head dims."""
    config, _ = FAMILIES[family]
    capability, limit = FAMILY_CAPABILITY[family], FAMILY_SHARED_MEMORY[family]
    cases = [(d, torch.float16, True) for d in HEAD_DIMS if d <= config.max_headdim]
    cases += [
        (d, dtype, causal) for d in (64, 256) for dtype, causal in ((torch.bfloat16, True), (torch.float16, False))
    ]
    too_big = []
    for head_dim, dtype, causal in cases:
        for kernel, block in _kernel_blocks(config, head_dim).items():
            used = fit.compiled_shared_memory(
                kernel, block, head_dim, capability, dtype, causal=causal, aligned=head_dim % 16 == 0
            )
            if used > limit:
                too_big.append(f"{kernel} d={head_dim} {dtype} causal={causal} {block}: {used} > {limit}")
            if fit.formula_applies(kernel, block, capability, dtype):
                bound = fit.estimate_shared_memory(kernel, block, head_dim, capability, dtype)
                assert used <= bound <= fit.MAX_OVERESTIMATE * used, (
                    f"{family} {kernel} d={head_dim} {block}: {bound=} {used=}"
                )
    assert not too_big, f"{family} tiles exceed sm_{capability[0]}{capability[1]}'s shared memory:\n" + "\n".join(
        too_big
    )


@needs_compiler
@pytest.mark.parametrize("family", sorted(FAMILY_CAPABILITY))
def test_fitting_keeps_each_family_tiles_on_its_own_gpus(family):
    config, _ = FAMILIES[family]
    capability = FAMILY_CAPABILITY[family]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a shrink would warn
        fitted = configs.fit_config(config, capability, FAMILY_SHARED_MEMORY[family])
    assert fitted == config
    assert fitted.shared_memory_bytes == FAMILY_SHARED_MEMORY[family] and fitted.capability == capability


@needs_compiler
@pytest.mark.parametrize(
    "kernel, block, head_dim, capability",
    [
        ("forward", BlockConfig(64, 64, 4, 1), 64, (7, 5)),
        ("forward", BlockConfig(128, 64, 4, 3), 64, (8, 0)),
        ("dkdv_atomic", BlockConfig(64, 128, 8, 2), 128, (9, 0)),
    ],
)
def test_allocation_pass_matches_full_compilation(kernel, block, head_dim, capability):
    quick = fit.compiled_shared_memory(kernel, block, head_dim, capability)
    full = fit.compiled_shared_memory(kernel, block, head_dim, capability, full_compile=True)
    assert quick == full > 0


@needs_compiler
@pytest.mark.parametrize("kernel", ["forward", "dkdv", "dkdv_atomic", "dq"])
def test_fp32_dots_keep_each_tile_apart_from_the_accumulator(kernel):
    """IEEE fp32 dots run on FMA units; accumulated inside the dot, each output element is one chain over the whole
    reduction (dV: every query row), and its error grew to 3.5x cuBLAS's on an H100. ``_dot`` sums each tile's
    product on its own and adds it after, but Triton's combine pass folds ``acc + dot(a, b)`` back into
    ``dot(a, b, acc)``. After Triton's passes every fp32 dot must still start from a zero accumulator."""
    import re

    from fa2dist.ops.attention import FP32_TILES

    block = FP32_TILES[64][kernel]
    src = fit.kernel_source(kernel, block, 64, torch.float32, causal=True)
    target = triton.backends.compiler.GPUTarget("cuda", 90, 32)
    ir = triton.compile(src, target=target, options={"num_warps": block.num_warps, "num_stages": block.num_stages})
    ir = ir.asm["ttgir"]
    dots = re.findall(r"= tt\.dot %[\w.#]+, %[\w.#]+, (%[\w.#]+)", ir)
    assert dots and len(dots) == ir.count("tt.dot "), "could not read every tt.dot of the compiled kernel"
    for acc in dots:
        definition = re.search(re.escape(acc) + r" = (.*)", ir)
        assert definition and re.match(r"arith\.constant dense<0\.0+e\+00>", definition.group(1)), (
            f"{kernel}: an fp32 dot accumulates into {acc} = {definition and definition.group(1)[:80]}"
        )


def test_turing_backward_needs_what_the_tiers_assume():
    """The Turing tiers were chosen with the exact sm_75 formula (fp16): dK/dV 8*n*d + 4*m*max(d, n)."""
    for d, block in ((128, BlockConfig(64, 32)), (256, BlockConfig(32, 16))):
        assert fit.estimate_shared_memory("dkdv", block, d, (7, 5)) == 65536
        assert fit.estimate_shared_memory("dq", BlockConfig(block.block_n, block.block_m), d, (7, 5)) == 65536
    assert fit.estimate_shared_memory("dkdv", BlockConfig(32, 64), 128, (7, 5)) == 81920  # the old tier


# ---- selection per device --------------------------------------------------------------------------------------------


@needs_compiler
@pytest.mark.parametrize("name", sorted(FAKE_GPUS))
def test_each_gpu_gets_its_family_config(fake_gpus, name):
    capability, smem, family = FAKE_GPUS[name]
    fake_gpus({0: _gpu(name)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*Triton .* on a Turing GPU")
        config = config_for_device(torch.device("cuda", 0))
    assert config.family == family
    assert config == FAMILIES[family][0]  # the family's own tiles fit its GPUs unchanged
    assert config.capability == capability and config.shared_memory_bytes == smem


@needs_compiler
def test_each_device_of_a_mixed_process_gets_its_own_config(fake_gpus):
    fake_gpus({0: _gpu("Tesla T4"), 1: _gpu("NVIDIA H100 80GB HBM3")})
    t4, h100 = torch.device("cuda", 0), torch.device("cuda", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert config_for_device(t4).family == "turing"
        assert config_for_device(h100).family == "hopper"
        assert select_config(h100).forward_for(128) == FAMILIES["hopper"][0].forward_for(128)
        assert select_config(t4).backward_for(128, True) == BackwardConfig(BlockConfig(64, 32), BlockConfig(32, 64))
        # Cached per device: the same object again, and "cuda" means the current device (index 0 here).
        assert config_for_device(h100) is config_for_device(h100)
        assert config_for_device(torch.device("cuda")) is config_for_device(t4)


def test_cpu_tensors_get_the_interpreter_config():
    assert select_config(torch.device("cpu")) is INTERPRETER_CONFIG
    assert config_for_device(torch.device("cpu")) is INTERPRETER_CONFIG


@needs_compiler
def test_unknown_newer_capability_uses_nearest_family_and_warns_once(fake_gpus):
    fake_gpus({0: ("future GPU", (11, 0), 232448), 1: ("future GPU", (11, 0), 232448)})
    with pytest.warns(UserWarning, match=r"no config for compute capability 11\.0; using blackwell's \(10\.3\)"):
        config = config_for_device(torch.device("cuda", 0))
    assert config.family == "blackwell"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_for_device(torch.device("cuda", 1)).family == "blackwell"


def test_capability_below_turing_is_refused(fake_gpus):
    fake_gpus({0: ("Tesla V100-SXM2-16GB", (7, 0), 98304)})
    with pytest.raises(ValueError, match=r"compute capability 7\.0 is older than Turing \(7\.5\)"):
        config_for_device(torch.device("cuda", 0))
    with pytest.raises(ValueError, match="older than Turing"):
        select_config(torch.device("cuda", 0), FAMILIES["turing"][0])


@pytest.mark.skipif(tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 3), reason="Triton < 3.3")
def test_turing_with_new_triton_warns_once_per_process(fake_gpus):
    fake_gpus({0: _gpu("Tesla T4"), 1: _gpu("Tesla T4")})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config_for_device(torch.device("cuda", 0))
        config_for_device(torch.device("cuda", 1))
        configs.clear_caches()
        config_for_device(torch.device("cuda", 0))
    messages = [str(w.message) for w in caught if "Turing GPU" in str(w.message)]
    assert len(messages) == 1
    assert "Triton 3.3 and newer allocate more shared memory" in messages[0]


# ---- shared-memory fitting -------------------------------------------------------------------------------------------


@needs_compiler
def test_large_tiles_at_head_dim_256_are_shrunk_to_64_kb(fake_gpus):
    fake_gpus({0: _gpu("Tesla T4")})
    big = KernelsConfig(
        family="big",
        forward=((256, BlockConfig(128, 128, 8, 2)),),
        backward_deterministic=((256, BackwardConfig(BlockConfig(64, 128, 8, 2), BlockConfig(128, 64, 8, 2))),),
        backward_sequence_parallel=((256, BackwardConfig(BlockConfig(64, 128, 8, 2), BlockConfig(128, 64, 8, 2))),),
    )
    with pytest.warns(UserWarning, match=r"the big config's tiles need more shared memory than this GPU's 65536"):
        fitted = select_config(torch.device("cuda", 0), big)
    for kernel, block in _kernel_blocks(fitted, 256).items():
        assert fit.required_shared_memory(kernel, block, 256, (7, 5)) <= 65536, (kernel, block)
    assert fitted.forward_for(256) == BlockConfig(32, 32, 8, 1)
    assert fitted.forward == ((256, fitted.forward_for(256)),)


@needs_compiler
def test_a_forced_family_is_fitted_to_a_smaller_gpu(fake_gpus, monkeypatch):
    fake_gpus({0: _gpu("NVIDIA GeForce RTX 5090")})
    monkeypatch.setenv(ENV_ARCH, "blackwell")  # sm_100 tiles on sm_120's 99 KB
    with pytest.warns(UserWarning, match="the blackwell config's tiles need more shared memory"):
        config = config_for_device(torch.device("cuda", 0))
    assert config.family == "blackwell"
    for d in (64, 128, 256):
        for kernel, block in _kernel_blocks(config, d).items():
            assert fit.required_shared_memory(kernel, block, d, (12, 0)) <= 101376, (d, kernel, block)


@needs_compiler
def test_head_dims_that_cannot_fit_are_dropped_then_refused(fake_gpus):
    fake_gpus({0: ("small", (8, 0), 24 * 1024), 1: ("tiny", (8, 0), 4 * 1024)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = config_for_device(torch.device("cuda", 0))
    messages = "\n".join(str(w.message) for w in caught)
    assert (
        "the ampere config runs head dims up to 128 only on this GPU: fa2dist's dkdv kernel at head dim 256" in messages
    )
    assert "forward at head dim <= 64: 128x64 (4 warps, 3 stages) -> 64x64 (4 warps, 1 stage)" in messages
    assert all(w.filename == __file__ for w in caught)  # attributed to the caller, not to fa2dist
    assert config.max_headdim == 128 and [d for d, _ in config.forward] == [64, 128]
    for kernel, block in _kernel_blocks(config, 128).items():
        assert fit.required_shared_memory(kernel, block, 128, (8, 0)) <= 24 * 1024
    with pytest.raises(
        ValueError,
        match=r"forward kernel at head dim 64 .* needs more than the 4096 bytes .* "
        r"smallest tiles \(BlockConfig\(block_m=16, block_n=16",
    ):
        config_for_device(torch.device("cuda", 1))


def test_fitting_is_deterministic_and_monotone():
    block = BlockConfig(128, 128, 8, 3)
    chain = [block]
    while chain[-1].shrink() is not None:
        chain.append(chain[-1].shrink())
    assert chain[1] == BlockConfig(128, 128, 8, 2) and chain[-1] == BlockConfig(16, 16, 8, 1)
    for kernel in ("forward", "dkdv", "dq"):
        bounds = [fit.estimate_shared_memory(kernel, b, 128, (8, 0)) for b in chain]
        assert bounds == sorted(bounds, reverse=True)


# ---- custom configs and overrides ------------------------------------------------------------------------------------


def _custom(family: str = "mine") -> KernelsConfig:
    block = BlockConfig(32, 32, 4, 1)
    bw = BackwardConfig(block, block)
    return KernelsConfig(
        family=family,
        forward=((256, block),),
        backward_deterministic=((256, bw),),
        backward_sequence_parallel=((256, bw),),
        source="test",
    )


@needs_compiler
def test_registered_config_outranks_the_table(fake_gpus):
    fake_gpus({0: _gpu("NVIDIA A100-SXM4-80GB")})
    device = torch.device("cuda", 0)
    assert config_for_device(device).family == "ampere"
    register_config((8, 0), _custom())
    assert config_for_device(device).family == "mine"
    unregister_configs()
    assert config_for_device(device).family == "ampere"


@needs_compiler
def test_seed_config_v2_registers_and_overrides(fake_gpus):
    fake_gpus({0: _gpu("Tesla T4")})
    v2 = KernelsConfigV2(
        block_rows_size=64,
        block_cols_size=64,
        min_block_headdim=16,
        max_headdim=128,
        seqlen_cache_divisor=32,
        min_warps=4,
        max_warps=8,
        num_stages=1,
    )
    device = torch.device("cuda", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        register_config((7, 5), v2)
        assert config_for_device(device).family == "custom"
        unregister_configs()
        assert select_config(device, {(7, 5): v2}).family == "custom"
        assert select_config(device, {(8, 0): v2}).family == "turing"  # not this GPU's capability: its own config


@needs_compiler
def test_per_call_config_outranks_env_and_registry(fake_gpus, monkeypatch):
    fake_gpus({0: _gpu("NVIDIA H100 80GB HBM3")})
    monkeypatch.setenv(ENV_ARCH, "ampere")
    register_config((9, 0), _custom("registered"))
    device = torch.device("cuda", 0)
    assert select_config(device).family == "ampere"  # the env outranks registered configs
    assert select_config(device, _custom("per-call")).family == "per-call"
    assert select_config(device, {(9, 0): _custom("per-call-dict")}).family == "per-call-dict"


@needs_compiler
@pytest.mark.parametrize(
    "value, family",
    [
        ("turing", "turing"),
        ("Ampere", "ampere"),
        ("ampere-consumer", "ampere_consumer"),
        ("ada", "ada"),
        ("hopper", "hopper"),
        ("blackwell_consumer", "blackwell_consumer"),
    ],
)
def test_env_forces_a_family_on_a_gpu_able_to_run_it(fake_gpus, monkeypatch, value, family):
    fake_gpus({0: _gpu("NVIDIA H100 80GB HBM3")})
    monkeypatch.setenv(ENV_ARCH, value)
    if family == "blackwell_consumer":
        with pytest.raises(ValueError, match=r"FA2DIST_ARCH=blackwell_consumer needs compute capability 12\.0"):
            config_for_device(torch.device("cuda", 0))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert config_for_device(torch.device("cuda", 0)).family == family


def test_env_is_read_per_call_and_part_of_the_cache_key(fake_gpus, monkeypatch):
    fake_gpus({0: _gpu("Tesla T4")})
    device = torch.device("cuda", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert config_for_device(device).family == "turing"
        monkeypatch.setenv(ENV_ARCH, "hopper")
        with pytest.raises(ValueError, match=r"FA2DIST_ARCH=hopper needs compute capability 9\.0 or newer"):
            config_for_device(device)
        monkeypatch.setenv(ENV_ARCH, "volta")
        with pytest.raises(ValueError, match=r"FA2DIST_ARCH='volta' is not a known family; use one of turing"):
            config_for_device(device)
        monkeypatch.delenv(ENV_ARCH)
        assert config_for_device(device).family == "turing"
        assert config_for_device(device, "turing") is config_for_device(device)


# ---- invalid configs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: BlockConfig(48, 64), ValueError, r"BlockConfig\(block_m=48\)` is not valid: use a power of two"),
        (lambda: BlockConfig(64, 512), ValueError, r"block_n=512"),
        (lambda: BlockConfig(64, 64, num_warps=3), ValueError, r"num_warps=3.*use one of \(1, 2, 4, 8, 16\)"),
        (lambda: BlockConfig(64, 64, num_warps=True), ValueError, r"num_warps=True"),
        (lambda: BlockConfig(64, 64, num_stages=0), ValueError, r"num_stages=0.*from 1 to 8"),
        (
            lambda: BackwardConfig((64, 64), BlockConfig(64, 64)),
            TypeError,
            r"BackwardConfig\(dkdv=...\)` must be a "
            r"BlockConfig",
        ),
        (lambda: KernelsConfig("", (), (), ()), TypeError, r"family=''"),
        (
            lambda: KernelsConfig("x", [(256, BlockConfig(64, 64))], (), ()),
            TypeError,
            r"KernelsConfig\(forward=...\)` must be a non-empty tuple of \(max_head_dim, BlockConfig\) pairs",
        ),
        (
            lambda: KernelsConfig("x", ((256, BlockConfig(64, 64)), (64, BlockConfig(64, 64))), (), ()),
            ValueError,
            r"head-dim tiers \[256, 64\] must strictly ascend",
        ),
        (lambda: KernelsConfig("x", ((128, BlockConfig(64, 64)),), (), ()), ValueError, r"reach max_headdim=256"),
        (lambda: _replace_headdim(300), ValueError, r"max_headdim=300.*16 to 256"),
        (lambda: register_config((7, 5), "turing"), TypeError, r"expected a KernelsConfig .* got str"),
        (lambda: register_config("7.5", _custom()), TypeError, r"expected a compute capability \(major, minor\)"),
        (lambda: register_config((7, 0), _custom()), ValueError, r"need compute capability 7\.5 or newer"),
        (lambda: select_config(torch.device("cpu"), "ampere"), TypeError, r"`config=` must be a KernelsConfig"),
        (
            lambda: fit.estimate_shared_memory("fwd", BlockConfig(64, 64), 64, (8, 0)),
            ValueError,
            r"`kernel='fwd'` is not one of fa2dist's kernels",
        ),
    ],
)
def test_invalid_configs_are_refused_with_their_fix(make, error, message):
    with pytest.raises(error, match=message):
        make()


def _replace_headdim(value: int) -> KernelsConfig:
    c = _custom()
    return KernelsConfig(c.family, c.forward, c.backward_deterministic, c.backward_sequence_parallel, max_headdim=value)


# ---- the warp-specialised Hopper forward (Gluon), cross-compiled for sm_90 --------------------------------------------

try:
    from fa2dist.ops.kernels.hopper import WS_BWD, WS_BWD_DQ, WS_TILES
except ImportError:  # a Triton without Gluon (fa2dist then runs the Triton kernels only)
    WS_TILES, WS_BWD, WS_BWD_DQ = (), (), ()


def _ptxas_spill_bytes(ptx: str) -> int:
    """Spill stores ptxas reports for sm_90a (Triton's own ptxas), in bytes. Also fails where ptxas serialises the
    warpgroup MMAs: C7514, an accumulator touched while its MMA may run (e.g. an MMA left in flight across a loop's
    back edge and read after it; such a kernel was measured 20-33% slower), C7512, too few registers to keep
    them in flight (the two-programs-per-SM forward was 8-12% slower with it), and C7513, an MMA's register operand
    written while it may run."""
    import re

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        report = subprocess.run(
            [get_ptxas(90).path, "-arch=sm_90a", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True, text=True, check=True,
        ).stderr
    assert not re.search(r"C751[234]", report), f"ptxas serialises the warpgroup MMAs: {report[-500:]}"
    spills = re.findall(r"(\d+) bytes spill stores", report)
    assert spills, f"no spill report from ptxas: {report[-500:]}"
    return sum(int(n) for n in spills)


def _gluon_desc(x: torch.Tensor, rows: int, cols: int):
    """The signature type of a Gluon tensor descriptor over ``x`` with [1, 1, rows, cols] blocks."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import mangle_type

    gl_dtype = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}[x.dtype]
    block = [1, 1, rows, cols]
    layout = gl.NVMMASharedLayout.get_default_for(block, gl_dtype)
    return mangle_type(TensorDescriptor(x, list(x.shape), list(x.stride()), block, layout))


def _compile_sm90(kernel, constexprs: dict, types: dict, compute_regs: str = "240", programs_per_sm: int = 1
                  ) -> str:
    """Cross-compile a Gluon kernel for sm_90 (arguments not in ``types`` are i32) and check what every
    warp-specialised kernel here must: ``programs_per_sm`` programs fit the H100's shared memory (and, for two, its
    registers: the launch's register cap times the program's threads), it asks for its register split (24 for the
    loading warp, ``compute_regs`` for the computing warpgroups) and uses wgmma. Returns the PTX."""
    import re

    from triton.experimental.gluon._runtime import GluonASTSource

    constexprs = dict(constexprs)
    launch = {k: constexprs.pop(k) for k in ("maxnreg",) if k in constexprs}
    signature = {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in kernel.arg_names}
    compiled = triton.compile(
        GluonASTSource(kernel, signature, constexprs), target=triton.backends.compiler.GPUTarget("cuda", 90, 32),
        options={"num_warps": 4, **launch},
    )
    assert 0 < compiled.metadata.shared * programs_per_sm <= FAMILY_SHARED_MEMORY["hopper"]
    ptx = compiled.asm["ptx"]
    if programs_per_sm > 1:
        cap = int(re.search(r"\.maxnreg\s+(\d+)", ptx).group(1))
        assert cap * compiled.metadata.num_warps * 32 * programs_per_sm <= 65536
    assert set(re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)) >= {"24", compute_regs}
    assert re.search(r"wgmma\.mma_async", ptx)
    return ptx


@needs_compiler
@pytest.mark.parametrize(
    "row,causal",
    [(row, causal) for row in WS_TILES for causal in ((False, True) if row[1] is None else (row[1],))],
    ids=lambda r: f"d{r[0]}-from{r[2]}-{r[3][0]}x{r[3][1]}s{r[3][2]}-{r[3][3]}per-sm" if isinstance(r, tuple)
    else ("causal" if r else "full"),
)
def test_warp_specialized_forward_fits_hopper(row, causal):
    """The Gluon kernel compiles for sm_90 with each registered tile, within the H100's shared memory (twice over
    for two programs per SM, whose registers must fit twice too), with the register split it asks for (one loading
    warp at 24 registers, the computing warpgroups at 240, 160, or 112 for two programs per SM or four warpgroups)
    and at most a few words of spills (ptxas's own report: 0, apart from the causal grids drawing tiles from a
    counter, 28 at d128 and 12 with 256-row tiles), without serialised MMAs. (Its numerics run on the GPU only:
    tests/test_gpu_kernels.py.)"""
    from fa2dist.ops.kernels.hopper import (
        WS_PERSISTENT,
        attn_fwd_ws_kernel,
        ws_dynamic,
        ws_k_free,
        ws_launch_options,
        ws_output_buffer,
        ws_row_shares,
        ws_split_tail,
    )

    head_dim, _, shortest, (block_m, block_n, stages, ctas) = row
    for dtype in (torch.bfloat16, torch.float16):
        options = ws_launch_options(block_m, ctas)
        # Causal: the interleaved grid order (ws_interleave), whose index arithmetic must not cost spills either.
        constexprs = dict(BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, STAGES=stages, CAUSAL=causal,
                          INTERLEAVE=4 if causal else 1, O_BUF=ws_output_buffer(head_dim, shortest),
                          K_FREE=ws_k_free(stages), ROW_SHARES=ws_row_shares(head_dim), **options)
        x = torch.empty(1, 2, 256, head_dim, dtype=dtype)
        types = dict(q_desc=_gluon_desc(x, 64, head_dim), k_desc=_gluon_desc(x, block_n, head_dim),
                     v_desc=_gluon_desc(x, block_n, head_dim), o_desc=_gluon_desc(x, 64, head_dim), LSE="*fp32",
                     COUNTER="*i32", sm_scale="fp32", CU_Q="*i32", CU_K="*i32", PARTIAL="*fp32",
                     O="*bf16" if dtype == torch.bfloat16 else "*fp16")
        # The persistent grids too, where some length of this row runs them (WS_PERSISTENT, WS_DYNAMIC).
        grids = {(False, False)}
        if any(dim == head_dim and c == causal for dim, c, _ in WS_PERSISTENT):
            grids.add((True, False))
        if ws_dynamic(head_dim, causal, shortest):
            grids.add((True, True))
        for persistent, dynamic in grids:
            # Sliding windows (a left bound) on the grid the row's shortest length runs: a window's tiles follow its
            # width, so every row may run one. Packed sequences (VARLEN) run one tile a program, with a window too.
            # The fixed persistent grid splits its last round's tiles by keys where WS_SPLIT_TAIL says so.
            variants = [(False, False, False)]
            if (persistent, dynamic) == max(grids):
                variants.append((True, False, False))
            if not persistent and dtype == torch.bfloat16:
                variants.append((causal, True, False))
            if persistent and not dynamic and ws_split_tail(head_dim, causal, shortest, 3, 2):
                variants.append((False, False, True))
            for has_left, varlen, split in variants:
                ptx = _compile_sm90(attn_fwd_ws_kernel, dict(constexprs, PERSISTENT=persistent, DYNAMIC=dynamic,
                                                             HAS_LEFT=has_left, VARLEN=varlen, SPLIT_TAIL=split),
                                    types, str(options["REGS"]), programs_per_sm=ctas)
                assert _ptxas_spill_bytes(ptx) <= (32 if dynamic and causal else 8), (has_left, varlen, split)


@needs_compiler
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("row", WS_BWD_DQ, ids=lambda row: f"d{row[0]}")
def test_warp_specialized_dq_fits_hopper(row, causal):
    """The Gluon dQ kernel compiles for sm_90 with its registered tiles, within the H100's shared memory, with the
    register split it asks for and (nearly) no spills."""
    from fa2dist.ops.kernels.hopper import attn_bwd_dq_ws_kernel

    head_dim, (block_m, block_n, stages) = row
    x = torch.empty(1, 2, 256, head_dim, dtype=torch.bfloat16)
    rows = {"q_desc": block_m // 2, "do_desc": block_m // 2, "dq_desc": block_m // 2, "k_desc": block_n,
            "v_desc": block_n}
    types = dict(LSE="*fp32", DELTA="*fp32", sm_scale="fp32", CU_Q="*i32", CU_K="*i32", DQ="*bf16",
                 **{name: _gluon_desc(x, n, head_dim) for name, n in rows.items()})
    # Causal with a sliding window's left bound too (the extra mask and the tiles skipped before the window); packed
    # sequences.
    constexprs = dict(BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, STAGES=stages, CAUSAL=causal,
                      HAS_LEFT=causal)
    for varlen in (False, True):
        ptx = _compile_sm90(attn_bwd_dq_ws_kernel, dict(constexprs, VARLEN=varlen), types)
        assert _ptxas_spill_bytes(ptx) <= 64, varlen


def test_warp_specialized_forward_only_where_it_applies(monkeypatch):
    """fp16/bf16 attention at d64, d128 and d256 on sm_90, causal or not, with or without a sliding window, padded
    or packed; everything else (softcap, ALiBi, dropout, other head dims, dtypes and GPUs) runs the Triton forward."""
    from fa2dist.ops import attention
    from fa2dist.ops.kernels.hopper import (
        ws_bwd_tiles,
        ws_dq_permuted,
        ws_dynamic,
        ws_fused_dq,
        ws_interleave,
        ws_k_free,
        ws_output_buffer,
        ws_persistent,
        ws_row_shares,
        ws_split_tail,
        ws_tiles,
    )

    if attention.attn_fwd_ws_kernel is None:
        pytest.skip("this Triton has no Gluon")
    monkeypatch.setattr(attention, "INTERPRET", False)
    monkeypatch.setattr(attention, "_capability", lambda device: (9, 0))
    q = torch.empty(1, 8, 2, 64, dtype=torch.bfloat16)
    dense = attention.Features(0.125)
    causal = attention.Features(0.125, window_right=0)
    assert attention._warp_specialized(q, 128, 1, dense) and attention._warp_specialized(q, 128, 4096, causal)
    assert attention._warp_specialized(q, 64, 1, dense) and attention._warp_specialized(q, 64, 2048, causal)
    # d64: 256-row tiles (four computing warpgroups) below 1280 keys without a mask and from 2k to 4k causal (6
    # stages past 2k); two programs per SM causal below 2k; 192-row tiles from 1280 without a mask and past 4k causal.
    assert ws_tiles(64, 1, False) == ws_tiles(64, 1279, False) == (256, 64, 6, 1)
    assert ws_tiles(64, 1, True) == ws_tiles(64, 1536, True) == ws_tiles(64, 2047, True) == (128, 64, 3, 2)
    assert ws_tiles(64, 2048, True) == (256, 64, 4, 1)
    assert ws_tiles(64, 2049, True) == ws_tiles(64, 4096, True) == (256, 64, 6, 1)
    assert ws_tiles(64, 1280, False) == ws_tiles(64, 2047, False) == ws_tiles(64, 2048, False) == (192, 128, 3, 1)
    assert ws_tiles(64, 4097, True) == ws_tiles(64, 16384, False) == (192, 128, 3, 1)
    # d128: 2 stages and an output buffer up to 2k keys, 3 stages from there; d256: 64-key tiles in 2 stages.
    assert ws_tiles(128, 1, True) == ws_tiles(128, 2048, False) == (128, 128, 2, 1)
    assert ws_tiles(128, 2049, True) == ws_tiles(128, 16384, False) == (128, 128, 3, 1)
    assert ws_tiles(256, 1, False) == ws_tiles(256, 16384, True) == (128, 64, 2, 1)
    assert ws_tiles(96, 1024, False) is None
    assert ws_output_buffer(64, 1) and ws_output_buffer(64, 1 << 20) and ws_output_buffer(128, 2048)
    assert not (ws_output_buffer(128, 2049) or ws_output_buffer(256, 1024))
    # Two stages free each K buffer apart from its V buffer.
    assert ws_k_free(2) and not (ws_k_free(3) or ws_k_free(6))
    # d64 keeps each thread's share of the row sums.
    assert ws_row_shares(64) and not (ws_row_shares(128) or ws_row_shares(256))
    # Causal forwards interleave 4 heads where a head's K and V take at most 4 MiB.
    assert ws_interleave(64, 16384) == ws_interleave(128, 8192) == ws_interleave(128, 1) == 4
    assert ws_interleave(64, 16385) == ws_interleave(128, 8193) == ws_interleave(256, 1024) == 1
    # Persistent grids: d128 without a mask, and (tiles drawn from a counter) d64 and d128 at short lengths.
    assert ws_persistent(128, False, 1024) and ws_persistent(128, False, 1 << 20)
    assert not (ws_persistent(128, True, 1024) or ws_persistent(64, False, 1024) or ws_persistent(256, False, 1024))
    assert ws_dynamic(64, False, 2047) and ws_dynamic(64, True, 4096) and not ws_dynamic(64, True, 4097)
    assert ws_dynamic(64, False, 4096) and not ws_dynamic(64, False, 4097)
    assert ws_dynamic(128, False, 2048) and ws_dynamic(128, True, 1024) and not ws_dynamic(128, True, 2049)
    assert not (ws_dynamic(256, False, 1024) or ws_dynamic(256, True, 1024))
    # The fixed persistent grid (d128 without a mask, from 2049 keys) shares out by keys the tiles past its last whole
    # round, where there are some: 16k tokens at d128 make 2048 tiles, 15 rounds of 132 programs and 68 tiles.
    assert ws_split_tail(128, False, 4096, 2048, 132) and ws_split_tail(128, False, 2049, 133, 132)
    assert not (ws_split_tail(128, False, 4096, 2112, 132) or ws_split_tail(128, False, 4096, 100, 132))
    assert not (ws_split_tail(128, False, 2048, 2048, 132) or ws_split_tail(128, True, 4096, 2048, 132))
    assert not (ws_split_tail(64, False, 16384, 2731, 132) or ws_split_tail(256, False, 16384, 2048, 132))
    # The dK/dV kernels: d64, d128 and d256.
    assert ws_bwd_tiles(128, False) == ws_bwd_tiles(128, True) == ws_bwd_tiles(64, False) == (64, 128, 2)
    assert ws_bwd_tiles(64, True) == (64, 128, 2) and ws_bwd_tiles(96, True) is None
    assert ws_bwd_tiles(256, False) == (64, 64, 2)
    # The sequence-parallel mode adds dQ from the dK/dV kernel: without a mask at every length, causal from 3k (d128)
    # and 4k (d64) keys.
    assert ws_fused_dq(128, False, 1) and ws_fused_dq(64, False, 1) and not ws_fused_dq(256, False, 16384)
    assert ws_fused_dq(128, True, 3072) and not ws_fused_dq(128, True, 3071)
    assert ws_fused_dq(64, True, 4096) and not ws_fused_dq(64, True, 4095)
    # d128 adds its dQ tiles with their rows permuted; d64 adds dQ^T.
    assert ws_dq_permuted(128) and not ws_dq_permuted(64)
    assert attention._warp_specialized(q.half(), 128, 1, dense)
    assert not attention._warp_specialized(q.float(), 128, 1, dense)
    assert attention._warp_specialized(q, 256, 1, dense)
    for head_dim in (32, 96, 160):
        assert not attention._warp_specialized(q, head_dim, 8192, dense)
    # Sliding windows run it too: the right bound as a shifted diagonal (CAUSAL), the left one as HAS_LEFT; tiles and
    # grid follow the window's width where both sides are bounded.
    for left, right, span in ((16, 0, 17), (-1, 4, 8192), (100, 27, 128), (16, -1, 8192), (9000, 0, 8192)):
        feats = attention.Features(0.125, window_left=left, window_right=right)
        assert attention._warp_specialized(q, 128, 8192, feats), feats
        assert attention._key_span(feats, 8192) == span
        assert attention._banded(feats) == (right >= 0)
        assert attention._window_args(feats) == dict(LEFT=max(left, 0), RIGHT=max(right, 0), HAS_LEFT=left >= 0)
    assert attention._warp_specialized(q, 128, 4096, attention.Features(0.125, window_right=0, varlen=True))
    for feats in (
        attention.Features(0.125, softcap=30.0),
        attention.Features(0.125, alibi=True),
        attention.Features(0.125, dropout_p=0.1),
        attention.Features(0.125, varlen=True, softcap=30.0),
        attention.Features(-0.125),
    ):
        assert not attention._warp_specialized(q, 128, 8192, feats), feats
    for capability in ((8, 0), (8, 9), (10, 0), (12, 0)):
        monkeypatch.setattr(attention, "_capability", lambda device, c=capability: c)
        assert not attention._warp_specialized(q, 128, 8192, dense)
    assert configs.DEFAULT_CONFIGS[(9, 0)].warp_specialize
    assert not configs.DEFAULT_CONFIGS[(9, 0)].atomic_dq
    assert all(c.atomic_dq for cap, c in configs.DEFAULT_CONFIGS.items() if cap != (9, 0))
    with pytest.raises(TypeError, match="atomic_dq"):
        dataclasses.replace(configs.DEFAULT_CONFIGS[(9, 0)], atomic_dq=1)
    assert not any(c.warp_specialize for cap, c in configs.DEFAULT_CONFIGS.items() if cap != (9, 0))
    with pytest.raises(ValueError, match="needs `tma=True`"):
        dataclasses.replace(configs.DEFAULT_CONFIGS[(9, 0)], tma=False)


@needs_compiler
def test_permuted_dq_rows_read_back():
    """The fused Hopper backward adds dQ row 8a + 4b + c into accumulator row 8a + 2c + b (rows rounded up to a
    multiple of 8); the conversion to q's dtype and layout puts every row back, at lengths with and without a last
    partial group of 8."""
    from fa2dist.ops.attention import _from_dq_acc

    for seqlen in (1, 7, 8, 13, 64, 100):
        dq = torch.randn(2, 3, seqlen, 16)
        acc = torch.full((2, 3, -(-seqlen // 8) * 8, 16), float("nan"))
        for row in range(seqlen):
            group, rest = divmod(row, 8)
            half, quarter = divmod(rest, 4)
            acc[:, :, 8 * group + 2 * quarter + half] = dq[:, :, row]
        for layout in ("bhsd", "bshd"):
            q = torch.empty(2, 3, seqlen, 16, dtype=torch.bfloat16)
            want = dq.to(torch.bfloat16)
            if layout == "bshd":
                q, want = q.transpose(1, 2).contiguous(), want.transpose(1, 2).contiguous()
            got = _from_dq_acc(acc, q, layout, permuted=True)
            assert got.shape == q.shape and got.stride() == q.stride()
            assert torch.equal(got, want), (seqlen, layout)


@pytest.mark.parametrize(
    "row, atomic_dq",
    [
        ((d, causal, tiles), atomic_dq)
        for d, causal_only, tiles in WS_BWD
        for causal in (True, False)[:2 - causal_only]
        for atomic_dq in (False, True)[:1 + (d <= 128)]  # head dims above 128: the split-role kernel, no dQ form
    ],
    ids=lambda p: ("seqpar" if p else "det") if isinstance(p, bool) else "d{}-{}".format(p[0], "causal" if p[1] else "full"),
)
def test_warp_specialized_backward_fits_hopper(row, atomic_dq):
    """The Gluon dK/dV kernels compile for sm_90 with their registered tiles, within the H100's shared memory, with
    the register split they ask for (24 for the loading warp, 240 for each computing warpgroup) and (nearly) no
    register spills; the sequence-parallel form adds dQ through the copy engine (a bulk reduction). Head dims above
    128 run the split-role kernel (no dQ form)."""
    from fa2dist.ops.kernels.hopper import attn_bwd_dkdv_split_kernel, attn_bwd_dkdv_ws_kernel, ws_dq_permuted

    head_dim, causal, (block_m, block_n, stages) = row
    split = head_dim > 128
    kernel = attn_bwd_dkdv_split_kernel if split else attn_bwd_dkdv_ws_kernel
    key_rows = block_n if split else block_n // 2
    x = torch.empty(1, 2, 256, head_dim, dtype=torch.bfloat16)
    # Causal with a sliding window's left bound too (its extra mask).
    constexprs = dict(BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, STAGES=stages, CAUSAL=causal,
                      HAS_LEFT=causal)
    if not split:
        constexprs.update(ATOMIC_DQ=atomic_dq, DQ_PERMUTED=atomic_dq and ws_dq_permuted(head_dim))
    # The first computing warpgroup adds each query tile's dQ, all columns.
    dq_desc = _gluon_desc(x.float(), block_m, head_dim) if atomic_dq else _gluon_desc(x, key_rows, head_dim)
    types = dict(q_desc=_gluon_desc(x, block_m, head_dim), do_desc=_gluon_desc(x, block_m, head_dim),
                 dq_desc=dq_desc, LSE="*fp32", DELTA="*fp32", sm_scale="fp32", CU_Q="*i32", CU_K="*i32", DK="*bf16",
                 DV="*bf16",
                 **{name: _gluon_desc(x, key_rows, head_dim) for name in ("k_desc", "v_desc", "dk_desc", "dv_desc")})
    # Packed sequences take the deterministic form (their dQ comes from the dQ pass).
    for varlen in (False, True)[:2 - atomic_dq]:
        ptx = _compile_sm90(kernel, dict(constexprs, VARLEN=varlen), types)
        # Measured with these spills (d128 causal: 104 bytes, 216 adding dQ; packed sequences with a window, whose
        # last keys' dK and dV go out row by row: 244); a change that spills much more needs re-timing.
        assert _ptxas_spill_bytes(ptx) <= (320 if varlen else 256), varlen
        assert ("cp.reduce.async.bulk.tensor" in ptx) == atomic_dq
