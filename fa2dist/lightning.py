"""Lightning glue: :class:`FlashAttentionCallback` reports, checks and warms up fa2dist on every rank of a job."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from fa2dist import determinism
from fa2dist.configs import KernelsConfig, select_config
from fa2dist.determinism import resolve_deterministic, set_deterministic
from fa2dist.module import FlashAttention, MultiheadFlashAttention
from fa2dist.ops.attention import INTERPRET, uses_kernels

TABLE_COLUMNS = ("rank", "host", "device", "gpu", "cc", "family", "path", "config", "deterministic")


@dataclass(frozen=True)
class AttentionShape:
    """One distinct attention call of a model: the FlashAttention module and the heads it sees."""

    module: FlashAttention
    head_dim: int
    num_heads: int
    num_kv_heads: int

    @property
    def key(self) -> tuple:
        m = self.module
        return (self.head_dim, self.num_heads, self.num_kv_heads, m.causal, m.deterministic, id(m.config), m.layout)


def find_attention_shapes(
    module: torch.nn.Module, head_dim: int | None = None, num_heads: int = 1
) -> list[AttentionShape]:
    """The distinct fa2dist attention calls of ``module``: one per (head dim, heads, causal, mode, config, layout).

    Heads come from each :class:`MultiheadFlashAttention`; a bare :class:`FlashAttention` (its shapes are only known
    at call time) is counted with ``head_dim`` and ``num_heads`` if ``head_dim`` is given, and skipped otherwise.
    """
    shapes: dict[tuple, AttentionShape] = {}
    inside_blocks: set[int] = set()
    for m in module.modules():
        if isinstance(m, MultiheadFlashAttention) and isinstance(m.attn, FlashAttention):
            inside_blocks.add(id(m.attn))
            shape = AttentionShape(m.attn, m.head_dim, m.num_heads, m.num_kv_heads)
            shapes.setdefault(shape.key, shape)
    if head_dim is not None:
        for m in module.modules():
            if isinstance(m, FlashAttention) and id(m) not in inside_blocks:
                shape = AttentionShape(m, head_dim, num_heads, num_heads)
                shapes.setdefault(shape.key, shape)
    return list(shapes.values())


def _config_summary(config: KernelsConfig, head_dims: list[int], deterministic: bool) -> str:
    """Forward and backward tiles for each head dim, e.g. ``d64 fwd 128x64/w4/s3 bwd 64x128+128x64``."""
    parts = []
    for d in head_dims:
        f = config.forward_for(d)
        b = config.backward_for(d, deterministic)
        bwd = f"{b.dkdv.block_m}x{b.dkdv.block_n}" + (f"+{b.dq.block_m}x{b.dq.block_n}" if deterministic else "")
        parts.append(f"d{d} fwd {f.block_m}x{f.block_n}/w{f.num_warps}/s{f.num_stages} bwd {bwd}")
    return "; ".join(parts) if parts else "-"


def _gather(row: dict[str, Any]) -> list[dict[str, Any]]:
    # `trainer.strategy.all_gather` takes tensors only; the rows are dicts of strings.
    if dist.is_available() and dist.is_initialized():
        rows: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(rows, row)
        return sorted(rows, key=lambda r: r["rank"])
    return [row]


def format_rank_table(rows: list[dict[str, Any]]) -> str:
    """The per-rank rows as an aligned text table."""
    cells = [list(TABLE_COLUMNS)] + [
        [
            *(str(r[c]) for c in TABLE_COLUMNS[:-1]),
            f"{r['deterministic']} ({r['deterministic_source']})",
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _count_tokens(batch: Any) -> int:
    """Tokens in a batch: batch x seqlen of its first tensor with two or more dims (first found in tuples/dicts)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] * batch.shape[1] if batch.dim() >= 2 else batch.numel()
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        count = _count_tokens(item)
        if count:
            return count
    return 0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FlashAttentionCallback(Callback):
    r"""Reports where and how fa2dist runs on every rank, makes the ranks agree on the deterministic mode, and
    optionally warms the kernels up before fit and logs training throughput.

    At ``setup`` each rank resolves its device, GPU, compute capability, kernel family and tiles (for the head dims of
    the model's :class:`~fa2dist.MultiheadFlashAttention` blocks) and its deterministic mode with the setting it came
    from. The rows are gathered on every rank (``callback.rank_table``), printed as a table on rank 0 and written to
    the loggers' hyperparameters (``fa2dist/...``). Rank 0's deterministic mode is broadcast and every rank must
    match it: a job whose ranks would run different backward modes stops before the first step.

    Args:
        deterministic: the backward mode of the whole job. ``None`` (default) keeps what each rank resolves (from
            ``fa2dist.set_deterministic``, ``FA2DIST_DETERMINISTIC`` or ``Trainer(deterministic=True)``) and checks
            that every rank agrees; ``True``/``False`` sets it on every rank for the run (restored at teardown).
        warmup: before fit, run one forward and backward of each distinct attention shape of the model on the rank's
            device (under the trainer's precision), so the Triton kernels compile before the first step rather than
            inside it.
        warmup_batch_size: batch size of the warm-up inputs.
        warmup_seqlen: sequence length of the warm-up inputs. Kernels compile per head dim, dtype, causal flag and
            whether the sequence length divides the tiles, so any length sharing the training length's divisibility by
            16 and the tiles compiles the same kernels; the training length is the safe choice.
        log_throughput: log ``fa2dist/batch_time_s`` (forward, backward and optimizer step of one batch on this
            rank), ``fa2dist/tokens_per_s`` (global, assuming every rank's batch takes as long) and
            ``fa2dist/tokens_seen`` (global, kept across restarts) every ``log_every_n_steps``.
        head_dim: head dim of bare :class:`~fa2dist.FlashAttention` modules (outside ``MultiheadFlashAttention``),
            whose shapes the callback cannot see; they are skipped when None.
        num_heads: query heads of those bare modules.

    Raises:
        TypeError: if ``deterministic`` is not True, False or None.
        ValueError: if a warm-up size is not positive.
        RuntimeError: at setup, if the ranks resolve different deterministic modes, or if
            ``Trainer(deterministic=True)`` (``torch.use_deterministic_algorithms(True)``) is on but fa2dist would run
            its non-deterministic backward.

    Example::

        from lightning.pytorch import Trainer
        from fa2dist.lightning import FlashAttentionCallback

        callback = FlashAttentionCallback(warmup=True, warmup_seqlen=1024, log_throughput=True)
        trainer = Trainer(accelerator="gpu", devices=8, strategy="ddp", callbacks=[callback])
        trainer.fit(model)  # model built from fa2dist.MultiheadFlashAttention blocks
        callback.rank_table  # [{"rank": 0, "host": ..., "gpu": "NVIDIA H100 80GB HBM3", "family": "hopper", ...}, ...]
    """

    def __init__(
        self,
        deterministic: bool | None = None,
        warmup: bool = True,
        warmup_batch_size: int = 1,
        warmup_seqlen: int = 512,
        log_throughput: bool = False,
        head_dim: int | None = None,
        num_heads: int = 1,
    ) -> None:
        if deterministic is not None and not isinstance(deterministic, bool):
            raise TypeError(f"`FlashAttentionCallback(deterministic={deterministic!r})` must be True, False or None.")
        for name, value in (("warmup_batch_size", warmup_batch_size), ("warmup_seqlen", warmup_seqlen)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"`FlashAttentionCallback({name}={value!r})` must be a positive integer.")
        self.deterministic = deterministic
        self.warmup = warmup
        self.warmup_batch_size = warmup_batch_size
        self.warmup_seqlen = warmup_seqlen
        self.log_throughput = log_throughput
        self.head_dim = head_dim
        self.num_heads = num_heads

        self.rank_table: list[dict[str, Any]] = []
        self.deterministic_mode: bool | None = None
        self.warmup_time_s: float | None = None
        self.tokens_seen = 0
        self._restored_mode: bool | None = None
        self._previous_global: bool | None = None
        self._set_global = False
        self._batch_start: float | None = None

    # ---- setup: the per-rank table and the deterministic agreement --------------------------------------------

    def local_row(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """This rank's row of the table."""
        device = trainer.strategy.root_device
        shapes = find_attention_shapes(pl_module, self.head_dim, self.num_heads)
        head_dims = sorted({s.head_dim for s in shapes})
        mode, source = resolve_deterministic(None)
        config = select_config(device)
        if device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            gpu, cc = torch.cuda.get_device_name(device), f"{major}.{minor}"
            path = "triton"
        else:
            gpu, cc = "-", "-"
            path = "triton-interpreter" if uses_kernels(device) and INTERPRET else "pytorch"
        return {
            "rank": trainer.global_rank,
            # Under Slurm the node's name, which is what a multi-node job's table should tell apart.
            "host": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
            "device": str(device),
            "gpu": gpu,
            "cc": cc,
            "family": config.family,
            "path": path,
            "config": _config_summary(config, head_dims, mode),
            "deterministic": mode,
            "deterministic_source": source,
            "torch_deterministic": torch.are_deterministic_algorithms_enabled(),
            "torch_deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        }

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.deterministic is not None:
            self._previous_global = determinism._global
            self._set_global = True
            set_deterministic(self.deterministic)
        row = self.local_row(trainer, pl_module)
        decided = trainer.strategy.broadcast(row["deterministic"], src=0)
        self.rank_table = _gather(row)
        check_rank_agreement(self.rank_table, decided)
        check_modules(pl_module)
        self.deterministic_mode = decided
        rank_zero_info(f"fa2dist on {len(self.rank_table)} rank(s):\n{format_rank_table(self.rank_table)}")
        hparams = self.hyperparameters()
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)

    def hyperparameters(self) -> dict[str, Any]:
        """The table as flat logger hyperparameters: the job's mode and families, and one line per rank."""
        families: dict[str, int] = {}
        for r in self.rank_table:
            families[r["family"]] = families.get(r["family"], 0) + 1
        out: dict[str, Any] = {
            "fa2dist/deterministic": self.deterministic_mode,
            "fa2dist/deterministic_source": self.rank_table[0]["deterministic_source"] if self.rank_table else "",
            "fa2dist/families": ", ".join(f"{f} x{n}" for f, n in families.items()),
        }
        for r in self.rank_table:
            out[f"fa2dist/rank{r['rank']}"] = " | ".join(
                str(r[c]) for c in ("host", "device", "gpu", "cc", "family", "path", "config")
            )
        return out

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._set_global:
            set_deterministic(self._previous_global)
            self._set_global = False

    # ---- fit: warm-up, restored-state check, throughput --------------------------------------------------------

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._restored_mode is not None and self._restored_mode != self.deterministic_mode:
            rank_zero_warn(
                f"The checkpoint was trained with fa2dist deterministic={self._restored_mode}, this run uses "
                f"{self.deterministic_mode}: the resumed loss curve will not match an uninterrupted run bit for bit."
            )
        if self.warmup:
            self.run_warmup(trainer, pl_module)

    def run_warmup(self, trainer: Trainer, pl_module: LightningModule) -> float:
        """One forward and backward of each attention shape of the model on its device; returns the seconds taken."""
        device = pl_module.device
        shapes = find_attention_shapes(pl_module, self.head_dim, self.num_heads)
        b, s = self.warmup_batch_size, self.warmup_seqlen
        # A private generator: the warm-up must not shift the training run's random stream.
        generator = torch.Generator(device=device).manual_seed(0)
        start = time.perf_counter()
        with torch.enable_grad(), trainer.precision_plugin.forward_context():
            for shape in shapes:
                layout = shape.module.layout
                dims = [
                    (b, s, h, shape.head_dim) if layout == "bshd" else (b, h, s, shape.head_dim)
                    for h in (shape.num_heads, shape.num_kv_heads, shape.num_kv_heads)
                ]
                q, k, v = (torch.randn(d, device=device, generator=generator, requires_grad=True) for d in dims)
                out = shape.module(q, k, v)
                out.float().sum().backward()
        _synchronize(device)
        self.warmup_time_s = time.perf_counter() - start
        rank_zero_info(
            f"fa2dist warm-up: {len(shapes)} attention shape(s) at batch {b}, seqlen {s} in {self.warmup_time_s:.2f} s"
        )
        return self.warmup_time_s

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.log_throughput:
            _synchronize(pl_module.device)
            self._batch_start = time.perf_counter()

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.log_throughput or self._batch_start is None:
            return
        _synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._batch_start
        self._batch_start = None
        tokens = _count_tokens(batch) * trainer.world_size
        self.tokens_seen += tokens
        metrics = {"fa2dist/batch_time_s": elapsed, "fa2dist/tokens_seen": float(self.tokens_seen)}
        if tokens and elapsed > 0:
            metrics["fa2dist/tokens_per_s"] = tokens / elapsed
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    # ---- state that survives a restart --------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"tokens_seen": self.tokens_seen, "deterministic": self.deterministic_mode}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens_seen = int(state_dict.get("tokens_seen", 0))
        self._restored_mode = state_dict.get("deterministic")


def check_rank_agreement(rows: list[dict[str, Any]], decided: bool) -> None:
    """Raise if any rank's deterministic mode differs from ``decided`` (rank 0's), or if a rank runs with
    ``torch.use_deterministic_algorithms(True)`` while the job's mode is non-deterministic. Every rank sees the same
    rows, so every rank raises together and none waits forever for the others."""
    differ = [r for r in rows if r["deterministic"] != decided]
    if differ:
        listing = ", ".join(
            f"rank {r['rank']} runs {r['deterministic']} (from {r['deterministic_source']})" for r in differ
        )
        raise RuntimeError(
            f"fa2dist's deterministic mode differs across ranks: rank 0 runs {decided} "
            f"(from {rows[0]['deterministic_source']}) but {listing}. Set it the same on every rank: "
            "`FlashAttentionCallback(deterministic=...)`, `FA2DIST_DETERMINISTIC` exported to every task, or "
            "`fa2dist.set_deterministic(...)` in code that every rank runs."
        )
    strict = [r for r in rows if r["torch_deterministic"] and not r["torch_deterministic_warn_only"]]
    if strict and not decided:
        raise RuntimeError(
            f"`Trainer(deterministic=True)` (torch.use_deterministic_algorithms(True)) is on for rank(s) "
            f"{', '.join(str(r['rank']) for r in strict)}, but fa2dist resolves deterministic=False from "
            f"{rows[0]['deterministic_source']}. Remove that setting, or pass `FlashAttentionCallback(deterministic=True)`."
        )
    if not decided and any(r["torch_deterministic"] for r in rows):
        rank_zero_warn(
            "`Trainer(deterministic='warn')` is on but fa2dist runs its non-deterministic (sequence-parallel) backward "
            f"(from {rows[0]['deterministic_source']}); gradients will not reproduce bit for bit."
        )


def check_modules(pl_module: torch.nn.Module) -> None:
    """Raise if ``Trainer(deterministic=True)`` is on but a FlashAttention module pins ``deterministic=False``."""
    if not torch.are_deterministic_algorithms_enabled() or torch.is_deterministic_algorithms_warn_only_enabled():
        return
    pinned = [
        name for name, m in pl_module.named_modules() if isinstance(m, FlashAttention) and m.deterministic is False
    ]
    if pinned:
        raise RuntimeError(
            f"`Trainer(deterministic=True)` is on but {len(pinned)} FlashAttention module(s) pin deterministic=False "
            f"(first: {pinned[0]!r}); build them with deterministic=None or True."
        )
