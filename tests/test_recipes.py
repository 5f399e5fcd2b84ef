"""Tests of the training recipes: every YAML config parses and trains a step, the tiny GPT beats the unigram baseline,
fa2dist and SDPA give the same loss curve, and the scripts run both as files and as modules."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from recipes.common.data import (  # noqa: E402
    CausalLMDataModule,
    MaskedLMDataModule,
    load_corpus,
    stdlib_files,
)
from recipes.common.plotting import read_metric  # noqa: E402
from recipes.common.tokenizer import ByteTokenizer  # noqa: E402
from recipes.encoder import train as encoder_train  # noqa: E402
from recipes.gpt import train as gpt_train  # noqa: E402

TINY_GPT = "recipes/gpt/configs/tiny.yaml"
CONFIGS = sorted((REPO / "recipes").glob("*/configs/*.yaml"))
MAINS = {"gpt": gpt_train.main, "encoder": encoder_train.main}

# Shrinks any config to a one-step CPU run: one process, fp32, a 1-layer model, a small slice of the corpus.
ONE_STEP = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.num_nodes=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",
    "--trainer.max_steps=1",
    "--trainer.val_check_interval=1",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--model.embed_dim=32",
    "--model.num_layers=1",
    "--model.num_heads=2",
    "--model.num_kv_heads=null",
    "--data.max_bytes=20000",
    "--data.block_size=32",
    "--data.batch_size=2",
    "--data.num_workers=0",
]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """The recipes' CLIs parse the ``args`` the tests pass, not pytest's own command line."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


def _recipe(config: Path) -> str:
    return config.parent.parent.name


def test_configs_found():
    names = {f"{_recipe(c)}/{c.stem}" for c in CONFIGS}
    assert names == {"gpt/tiny", "gpt/small", "gpt/medium", "gpt/multinode", "encoder/tiny", "encoder/small"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{_recipe(c)}-{c.stem}")
def test_config_parses_and_runs_one_step(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs write under runs/
    cli = MAINS[_recipe(config)](["fit", f"--config={config}", *ONE_STEP])
    trainer = cli.trainer
    assert trainer.global_step == 1
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))
    assert (tmp_path / trainer.default_root_dir / "checkpoints" / "last.ckpt").is_file()
    csv_dir = Path(trainer.loggers[0].log_dir)
    assert (csv_dir / "summary.json").is_file() and (csv_dir / "loss_curves.png").is_file()
    assert any(Path(trainer.loggers[1].log_dir).glob("events.out.tfevents.*"))


@pytest.mark.parametrize("recipe", ["gpt", "encoder"])
def test_compiled_training_step(recipe, tmp_path, monkeypatch):
    """--model.compile trains through torch.compile (inductor on the CPU here; CUDA graphs on a GPU), and the
    checkpoint keeps the weights under the eager model's names."""
    monkeypatch.chdir(tmp_path)
    config = REPO / "recipes" / recipe / "configs" / "tiny.yaml"
    cli = MAINS[recipe](["fit", f"--config={config}", *ONE_STEP, "--model.compile=reduce-overhead"])
    assert cli.trainer.global_step == 1
    assert math.isfinite(float(cli.trainer.callback_metrics["train_loss"]))
    state = torch.load(tmp_path / cli.trainer.default_root_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["state_dict"].keys() == cli.model.state_dict().keys()
    assert not any("_orig_mod" in key for key in state["state_dict"])


def test_resume_from_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = f"--config={REPO / TINY_GPT}"
    gpt_train.main(["fit", config, *ONE_STEP])
    cli = gpt_train.main(["fit", config, *ONE_STEP, "--trainer.max_steps=2", "--ckpt_path=last"])
    assert cli.trainer.global_step == 2  # continued from step 1


def test_sdpa_and_fa2dist_follow_the_same_loss_curve(tmp_path, monkeypatch):
    steps = 20
    curves = {}
    for attention in ("fa2dist", "sdpa"):
        (tmp_path / attention).mkdir()
        monkeypatch.chdir(tmp_path / attention)
        cli = gpt_train.main(
            [
                "fit",
                f"--config={REPO / TINY_GPT}",
                f"--model.attention={attention}",
                f"--trainer.max_steps={steps}",
                f"--trainer.val_check_interval={steps}",
                "--trainer.limit_val_batches=1",
                "--trainer.log_every_n_steps=1",
                "--trainer.enable_progress_bar=false",
                "--model.num_layers=2",
                "--data.max_bytes=200000",
                "--data.batch_size=8",
            ]
        )
        _, losses = read_metric(Path(cli.trainer.loggers[0].log_dir) / "metrics.csv", "train_loss")
        curves[attention] = torch.tensor(losses)
    fa, sdpa = curves["fa2dist"], curves["sdpa"]
    assert len(fa) == len(sdpa) == steps
    assert fa[-1] < fa[0] - 1.0  # it learns
    diff = (fa - sdpa).abs().max().item()
    print(f"fa2dist vs SDPA over {steps} steps: max loss difference {diff:.2e}")
    assert diff < 1e-4, f"max loss difference {diff:.2e} over {steps} steps:\n{fa}\n{sdpa}"


@pytest.mark.slow
def test_tiny_gpt_beats_unigram_baseline(tmp_path):
    """The README's main job, as a user runs it: about two minutes of CPU time, clearly better than byte frequencies.
    It inherits the thread count (`bash .ci/test` sets OMP_NUM_THREADS=1, which is also the fastest on a busy machine)."""
    command = [sys.executable, str(REPO / "recipes/gpt/train.py"), "fit", "--config", str(REPO / TINY_GPT)]
    proc = subprocess.run(
        [*command, "--trainer.enable_progress_bar=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    summary = json.loads((tmp_path / "runs/gpt-tiny/csv/version_0/summary.json").read_text())
    print(json.dumps(summary, indent=2))
    assert summary["steps"] == 300 and summary["val_step"] == 300
    assert summary["val_loss"] < summary["unigram_loss"] - 0.8, summary  # measured: 1.72 vs 3.12
    assert "Validation at step 300" in output and "Sample (200 bytes after 'def ')" in output


def test_scripts_run_as_file_and_as_module():
    for command in (
        [sys.executable, "recipes/gpt/train.py", "fit", "--help"],
        [sys.executable, "-m", "recipes.encoder.train", "fit", "--help"],
    ):
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "--model.attention" in proc.stdout and "--data.max_bytes" in proc.stdout
        assert "scaled_dot_product_attention" in proc.stdout  # field docs reach --help


def test_stdlib_corpus_is_sorted_capped_and_reproducible():
    files = stdlib_files()
    names = [name for name, _ in files]
    assert names == sorted(names) and len(names) > 100
    assert not any(part in {"site-packages", "test", "idlelib"} for name in names for part in name.split("/"))
    data, where = load_corpus(None, max_bytes=100_000)
    assert len(data) == 100_000 and where.startswith("Python ")
    assert data == load_corpus(None, max_bytes=100_000)[0]
    assert data.startswith(f"\n# ---- {names[0]} ----\n".encode())


def test_corpus_from_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("world\n")
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2")
    assert load_corpus(str(tmp_path / "a.txt"))[0] == b"hello\n"
    data, _ = load_corpus(str(tmp_path))
    assert data == b"\n# ---- a.txt ----\nhello\n\n# ---- sub/b.txt ----\nworld\n"  # binary skipped, sorted
    assert load_corpus(str(tmp_path), pattern="**/b.txt")[0].endswith(b"world\n")
    with pytest.raises(FileNotFoundError, match="--data.path"):
        load_corpus(str(tmp_path / "missing"))


def test_data_modules_windows_and_baseline():
    dm = CausalLMDataModule(max_bytes=50_000, block_size=64, batch_size=4)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 64) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert 2.0 < dm.unigram_cross_entropy() < math.log(256)

    mlm = MaskedLMDataModule(max_bytes=50_000, block_size=64, batch_size=4, mask_prob=0.15)
    mlm.setup("fit")
    val = mlm.val_dataloader().dataset
    inputs, targets = val[0]
    assert torch.equal(inputs, val[0][0])  # fixed validation masks
    selected = targets != -100
    assert selected.any() and (inputs[selected] == ByteTokenizer.mask_id).any()
    assert torch.equal(inputs[~selected], mlm.val_tokens[:64].long()[~selected])


def test_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode("naïve ✓")
    assert ids.max() < 256 and tok.decode(ids) == "naïve ✓"
    assert tok.decode([104, 105, tok.mask_id, tok.eos_id]) == "hi"


def test_errors_name_the_flag():
    with pytest.raises(ValueError, match="--data.val_fraction"):
        CausalLMDataModule(val_fraction=1.5)
    with pytest.raises(ValueError, match="--data.mask_prob"):
        MaskedLMDataModule(mask_prob=0.0)
    with pytest.raises(ValueError, match="attention='flash'"):
        gpt_train.GPT(attention="flash")
    with pytest.raises(ValueError, match="--model.compile='fast'"):
        gpt_train.GPT(compile="fast")
    with pytest.raises(ValueError, match="--model.compile='fast'"):
        encoder_train.MaskedLM(compile="fast")
    with pytest.raises(ValueError, match="accumulate_grad_batches=4"):
        gpt_train.GPT(compile="reduce-overhead").train_forward.check(SimpleNamespace(accumulate_grad_batches=4))
    gpt_train.GPT(compile="default").train_forward.check(SimpleNamespace(accumulate_grad_batches=4))
