"""Tests of fa2dist.lightning: each FlashAttentionCallback hook on a fake trainer, a real single-process Trainer, and a
two-process DDP run on CPU (gloo).

Run as a script, this file is the DDP training job the tests start (Lightning's launcher starts rank 1 by running
the same command again):

    python tests/test_lightning.py OUT.json [agree|mismatch]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the script run needs `recipes` importable
    sys.path.insert(0, str(REPO))

import fa2dist  # noqa: E402
from fa2dist.lightning import (  # noqa: E402
    FlashAttentionCallback,
    check_rank_agreement,
    find_attention_shapes,
    format_rank_table,
)
from fa2dist.module import FlashAttention  # noqa: E402
from recipes.common.model import Transformer  # noqa: E402

VOCAB = 64


class TinyLM(pl.LightningModule):
    """Two fa2dist blocks predicting the next token of arithmetic sequences; records its training losses."""

    def __init__(self, num_kv_heads: int | None = None) -> None:
        super().__init__()
        self.model = Transformer(VOCAB, embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=num_kv_heads)
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())
        self.losses.append(loss.item())
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def sequences(n: int = 64, seqlen: int = 32, seed: int = 0) -> TensorDataset:
    """Token i of a sequence is (start + i * stride) mod VOCAB: learnable from context within a few steps."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, 5, (n, 1), generator=g)
    tokens = (start + stride * torch.arange(seqlen + 1)) % VOCAB
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


@pytest.fixture(autouse=True)
def clean_modes():
    """Each test starts and ends with no fa2dist or torch deterministic setting."""
    fa2dist.set_deterministic(None)
    torch.use_deterministic_algorithms(False)
    yield
    fa2dist.set_deterministic(None)
    torch.use_deterministic_algorithms(False)


class FakeStrategy:
    def __init__(self, rank0_value: bool | None = None) -> None:
        self.root_device = torch.device("cpu")
        self.rank0_value = rank0_value

    def broadcast(self, obj, src=0):
        return obj if self.rank0_value is None else self.rank0_value


class FakeLogger:
    def __init__(self) -> None:
        self.hparams: dict = {}

    def log_hyperparams(self, params) -> None:
        self.hparams.update(params)


def fake_trainer(rank0_value: bool | None = None, world_size: int = 1, precision=None) -> SimpleNamespace:
    return SimpleNamespace(
        strategy=FakeStrategy(rank0_value),
        global_rank=0,
        world_size=world_size,
        loggers=[FakeLogger()],
        precision_plugin=precision or Precision(),
    )


# ---- setup ------------------------------------------------------------------------------------------------------


def test_setup_builds_rank_table_and_logs_hyperparameters():
    torch.manual_seed(0)
    trainer, model, callback = fake_trainer(), TinyLM(), FlashAttentionCallback()
    callback.setup(trainer, model, "fit")
    print("\n" + format_rank_table(callback.rank_table))
    assert len(callback.rank_table) == 1
    row = callback.rank_table[0]
    assert row["rank"] == 0 and row["device"] == "cpu" and row["family"] == "interpreter"
    assert row["config"].startswith("d16 fwd 64x64")  # head dim 32 / 2 heads = 16
    assert (row["deterministic"], row["deterministic_source"]) == (False, "default")
    assert callback.deterministic_mode is False
    hparams = trainer.loggers[0].hparams
    assert hparams["fa2dist/deterministic"] is False
    assert hparams["fa2dist/families"] == "interpreter x1"
    assert "interpreter" in hparams["fa2dist/rank0"]


def test_setup_raises_when_rank0_decided_otherwise():
    # rank 0 broadcasts True; this rank resolves False (nothing set): it must stop with a message naming the setting.
    callback = FlashAttentionCallback()
    with pytest.raises(RuntimeError, match=r"differs across ranks.*rank 0 runs False \(from default\)"):
        callback.setup(fake_trainer(rank0_value=True), TinyLM(), "fit")


def test_check_rank_agreement_names_every_disagreeing_rank():
    def row(rank, mode, source):
        return {
            "rank": rank,
            "deterministic": mode,
            "deterministic_source": source,
            "torch_deterministic": False,
            "torch_deterministic_warn_only": False,
        }

    rows = [row(0, False, "default"), row(1, True, "environment FA2DIST_DETERMINISTIC"), row(2, False, "default")]
    with pytest.raises(
        RuntimeError, match=r"rank 0 runs False \(from default\) but rank 1 runs True \(from environment"
    ):
        check_rank_agreement(rows, decided=False)
    check_rank_agreement([row(0, True, "argument"), row(1, True, "argument")], decided=True)


def test_trainer_deterministic_requires_deterministic_mode():
    torch.use_deterministic_algorithms(True)  # what Trainer(deterministic=True) does
    callback = FlashAttentionCallback()
    callback.setup(fake_trainer(), TinyLM(), "fit")  # nothing else set: fa2dist follows torch
    assert callback.rank_table[0]["deterministic_source"] == "torch.use_deterministic_algorithms(True)"
    assert callback.deterministic_mode is True

    fa2dist.set_deterministic(False)
    with pytest.raises(RuntimeError, match=r"Trainer\(deterministic=True\).*resolves deterministic=False"):
        FlashAttentionCallback().setup(fake_trainer(), TinyLM(), "fit")


def test_trainer_deterministic_warn_only_warns():
    torch.use_deterministic_algorithms(True, warn_only=True)  # Trainer(deterministic="warn")
    fa2dist.set_deterministic(False)
    with pytest.warns(UserWarning, match="non-deterministic"):
        FlashAttentionCallback().setup(fake_trainer(), TinyLM(), "fit")


def test_trainer_deterministic_rejects_module_pinned_false():
    torch.use_deterministic_algorithms(True)
    model = TinyLM()
    model.model.blocks[1].attn.attn.deterministic = False
    with pytest.raises(RuntimeError, match="pin deterministic=False.*blocks.1.attn.attn"):
        FlashAttentionCallback().setup(fake_trainer(), model, "fit")


def test_deterministic_argument_sets_mode_and_teardown_restores_it():
    fa2dist.set_deterministic(False)
    trainer, model, callback = fake_trainer(), TinyLM(), FlashAttentionCallback(deterministic=True)
    callback.setup(trainer, model, "fit")
    assert (
        fa2dist.is_deterministic() and callback.rank_table[0]["deterministic_source"] == "fa2dist.set_deterministic()"
    )
    callback.teardown(trainer, model, "fit")
    assert fa2dist.determinism.resolve_deterministic(None) == (False, "fa2dist.set_deterministic()")


@pytest.mark.parametrize(
    "kwargs, error",
    [({"deterministic": 1}, TypeError), ({"warmup_seqlen": 0}, ValueError), ({"warmup_batch_size": -1}, ValueError)],
)
def test_invalid_arguments(kwargs, error):
    with pytest.raises(error, match="FlashAttentionCallback"):
        FlashAttentionCallback(**kwargs)


def test_find_attention_shapes():
    model = TinyLM(num_kv_heads=1)
    shapes = find_attention_shapes(model)
    assert [(s.head_dim, s.num_heads, s.num_kv_heads) for s in shapes] == [(16, 2, 1)]  # two blocks, one shape
    bare = torch.nn.ModuleDict({"mha": model.model, "extra": FlashAttention(causal=False)})
    assert len(find_attention_shapes(bare)) == 1  # the bare module's shape is unknown without head_dim
    shapes = find_attention_shapes(bare, head_dim=40, num_heads=3)
    assert sorted((s.head_dim, s.num_heads, s.module.causal) for s in shapes) == [(16, 2, True), (40, 3, False)]


# ---- fit: warm-up, throughput, state ----------------------------------------------------------------------------


@pytest.mark.parametrize("precision", [Precision(), MixedPrecision("bf16-mixed", "cpu")], ids=["fp32", "bf16-mixed"])
def test_on_fit_start_warms_up_without_touching_the_rng(precision):
    model, callback = TinyLM(num_kv_heads=1), FlashAttentionCallback(warmup_seqlen=48, warmup_batch_size=2)
    rng = torch.random.get_rng_state()
    callback.on_fit_start(fake_trainer(precision=precision), model)
    assert callback.warmup_time_s is not None and callback.warmup_time_s >= 0
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(p.grad is None for p in model.parameters())  # FlashAttention has no parameters to touch


def test_warmup_can_be_turned_off():
    callback = FlashAttentionCallback(warmup=False)
    callback.on_fit_start(fake_trainer(), TinyLM())
    assert callback.warmup_time_s is None


def test_train_batch_hooks_log_throughput():
    logged = []
    pl_module = SimpleNamespace(device=torch.device("cpu"), log_dict=lambda m, **kw: logged.append((m, kw)))
    callback = FlashAttentionCallback(log_throughput=True)
    batch = (torch.zeros(4, 32, dtype=torch.long), torch.zeros(4, 32, dtype=torch.long))
    for i in range(2):
        callback.on_train_batch_start(fake_trainer(world_size=2), pl_module, batch, i)
        callback.on_train_batch_end(fake_trainer(world_size=2), pl_module, None, batch, i)
    assert len(logged) == 2
    metrics, kwargs = logged[-1]
    assert metrics["fa2dist/tokens_seen"] == 2 * 4 * 32 * 2  # two batches of 4 x 32 tokens on two ranks
    assert metrics["fa2dist/tokens_per_s"] > 0 and metrics["fa2dist/batch_time_s"] > 0
    assert kwargs == {"on_step": True, "on_epoch": False}

    quiet = FlashAttentionCallback(log_throughput=False)
    quiet.on_train_batch_start(fake_trainer(), pl_module, batch, 0)
    quiet.on_train_batch_end(fake_trainer(), pl_module, None, batch, 0)
    assert len(logged) == 2


def test_state_dict_round_trip_and_resume_warning():
    callback = FlashAttentionCallback(warmup=False)
    callback.tokens_seen, callback.deterministic_mode = 12345, True
    state = callback.state_dict()
    assert state == {"tokens_seen": 12345, "deterministic": True}

    resumed = FlashAttentionCallback(warmup=False)
    resumed.load_state_dict(state)
    assert resumed.tokens_seen == 12345
    resumed.setup(fake_trainer(), TinyLM(), "fit")  # this run resolves False
    with pytest.warns(UserWarning, match="trained with fa2dist deterministic=True"):
        resumed.on_fit_start(fake_trainer(), TinyLM())


# ---- real trainers ----------------------------------------------------------------------------------------------


def test_single_process_trainer(tmp_path):
    pl.seed_everything(0)
    model = TinyLM()
    callback = FlashAttentionCallback(warmup_seqlen=32, log_throughput=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=6,
        deterministic=True,
        callbacks=[callback],
        logger=pl.loggers.CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(sequences(), batch_size=8, shuffle=True))
    assert len(model.losses) == 6
    assert callback.rank_table[0]["deterministic_source"] == "torch.use_deterministic_algorithms(True)"
    assert callback.warmup_time_s is not None
    assert callback.tokens_seen == 6 * 8 * 32
    assert trainer.callback_metrics["fa2dist/tokens_per_s"] > 0
    hparams = (Path(trainer.logger.log_dir) / "hparams.yaml").read_text()
    assert "fa2dist/deterministic: true" in hparams


def _run_ddp(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env["OMP_NUM_THREADS"] = "1"  # two ranks on two cores
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(out), mode],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return proc, out


def test_ddp_two_ranks_table_and_loss(tmp_path):
    proc, out = _run_ddp(tmp_path, "agree")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    print("\n" + format_rank_table(result["rank_table"]))
    assert [r["rank"] for r in result["rank_table"]] == [0, 1]
    assert len({r["deterministic"] for r in result["rank_table"]}) == 1
    assert "fa2dist on 2 rank(s)" in proc.stdout + proc.stderr
    losses = result["losses"]
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert result["tokens_seen"] == result["steps"] * 8 * 32 * 2


def test_ddp_mismatched_deterministic_modes_raise(tmp_path):
    proc, out = _run_ddp(tmp_path, "mismatch")
    assert proc.returncode != 0
    assert "deterministic mode differs across ranks" in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()


def _ddp_job(out: str, mode: str) -> None:
    """Train TinyLM for a few steps on 2 CPU processes with DDP; rank 0 writes the callback's table and its losses."""
    if mode == "mismatch" and os.environ.get("LOCAL_RANK", "0") == "1":
        fa2dist.set_deterministic(True)  # only rank 1: the callback must refuse to start
    pl.seed_everything(0)
    model = TinyLM()
    callback = FlashAttentionCallback(warmup_seqlen=32, log_throughput=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=12,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(sequences(), batch_size=8, shuffle=True))
    if trainer.is_global_zero:
        result = {
            "rank_table": callback.rank_table,
            "losses": model.losses,
            "steps": trainer.global_step,
            "tokens_seen": callback.tokens_seen,
        }
        Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    _ddp_job(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "agree")
