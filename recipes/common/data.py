"""Text corpora as byte tokens, and the data modules of the recipes.

With no ``path``, the corpus is the source of Python's standard library on this machine: the ``.py`` files under
``os.path.dirname(os.__file__)`` in sorted order, minus the parts that distributions package separately (tests,
tkinter, idlelib, ...) and generated tables (encodings, pydoc_data). It needs no download and is the same, byte for
byte, on every machine with the same Python version; the SHA-256 printed at setup lets you check that.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from recipes.common.tokenizer import ByteTokenizer

# Path components left out of the standard-library corpus: installed packages, parts that Linux distributions ship
# in separate packages (so their presence varies between machines), and machine-generated tables.
STDLIB_EXCLUDE = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "distutils",
        "ensurepip",
        "encodings",
        "pydoc_data",
    }
)
IGNORE_INDEX = -100


def _file_header(name: str) -> bytes:
    return f"\n# ---- {name} ----\n".encode()


def stdlib_files() -> list[tuple[str, Path]]:
    """(relative posix path, absolute path) of the standard-library corpus files, sorted by relative path."""
    root = Path(os.path.dirname(os.__file__))
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in STDLIB_EXCLUDE]  # prune: site-packages alone is large
        for name in names:
            if name.endswith(".py"):
                path = Path(folder, name)
                files.append((path.relative_to(root).as_posix(), path))
    return sorted(files)


def _folder_files(root: Path, pattern: str) -> list[tuple[str, Path]]:
    files = [(p.relative_to(root).as_posix(), p) for p in root.glob(pattern) if p.is_file()]
    return sorted(files)


def load_corpus(path: str | None = None, max_bytes: int = 0, pattern: str = "**/*") -> tuple[bytes, str]:
    """Read a corpus as bytes, and describe where it came from.

    Args:
        path: a text file, a folder (its files matching ``pattern``, sorted, each after a ``# ---- name ----``
            line) or None for the standard-library corpus.
        max_bytes: keep only the first ``max_bytes`` bytes; 0 keeps everything.
        pattern: glob for the files of a folder; files containing NUL bytes (binaries) are skipped.
    """
    if path is None:
        files = stdlib_files()
        where = f"Python {'.'.join(map(str, sys.version_info[:3]))} standard library"
    else:
        root = Path(path).expanduser()
        if root.is_file():
            files = None
            data = root.read_bytes()
            where = str(root)
        elif root.is_dir():
            files = _folder_files(root, pattern)
            where = f"{root} ({pattern})"
        else:
            raise FileNotFoundError(f"`--data.path {path}`: no such file or folder.")
    if path is None or files is not None:
        if not files:
            raise FileNotFoundError(f"`--data.path {path}`: no files match `--data.pattern {pattern}`.")
        chunks, size = [], 0
        for name, file in files:
            content = file.read_bytes()
            if b"\0" in content:
                continue
            chunks.append(_file_header(name) + content)
            size += len(chunks[-1])
            if max_bytes and size >= max_bytes:
                break
        data = b"".join(chunks)
    if max_bytes:
        data = data[:max_bytes]
    if len(data) < 2:
        raise ValueError(f"the corpus from {where} holds {len(data)} bytes; it needs at least two.")
    return data, where


class CausalLMDataset(Dataset):
    """Non-overlapping windows of ``block_size + 1`` tokens as (input, target) pairs shifted by one."""

    def __init__(self, tokens: torch.Tensor, block_size: int) -> None:
        self.tokens = tokens
        self.block_size = block_size

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.block_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.block_size
        window = self.tokens[start : start + self.block_size + 1].long()
        return window[:-1], window[1:]


class MaskedLMDataset(Dataset):
    """Windows of ``block_size`` tokens with BERT's corruption: ``mask_prob`` of the positions become targets; of
    those, 80% are replaced by the mask token, 10% by a random byte and 10% kept. Other targets are ignored (-100).

    With ``seed`` set, window ``i`` is always masked the same way (a fixed validation set); without, masks are
    drawn from torch's global generator (which ``seed_everything(workers=True)`` seeds in every worker).
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, mask_prob: float, seed: int | None = None) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.mask_prob = mask_prob
        self.seed = seed
        self.tokenizer = ByteTokenizer()

    def __len__(self) -> int:
        return len(self.tokens) // self.block_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.block_size
        target = self.tokens[start : start + self.block_size].long()
        gen = torch.Generator().manual_seed(self.seed + index) if self.seed is not None else None
        draw = torch.rand(self.block_size, generator=gen)
        selected = draw < self.mask_prob
        selected[int(torch.randint(self.block_size, (1,), generator=gen))] = True  # at least one target per window
        action = torch.rand(self.block_size, generator=gen)
        random_bytes = torch.randint(self.tokenizer.num_bytes, (self.block_size,), generator=gen)
        inputs = target.clone()
        inputs[selected & (action < 0.8)] = self.tokenizer.mask_id
        swap = selected & (action >= 0.8) & (action < 0.9)
        inputs[swap] = random_bytes[swap]
        return inputs, torch.where(selected, target, IGNORE_INDEX)


class TextDataModule(LightningDataModule):
    """A byte-level text corpus split into train and validation windows.

    Args:
        path: a text file or a folder to train on; None (the default) uses the Python standard library's source.
        pattern: glob selecting the files of a ``path`` folder.
        max_bytes: use only the first ``max_bytes`` bytes of the corpus (0 for all); keeps runs short and the data
            identical across machines.
        block_size: tokens (bytes) per training sequence.
        batch_size: sequences per batch on each device (the global batch is this x devices x nodes x gradient
            accumulation).
        val_fraction: share of the corpus, taken from its end, held out for validation.
        num_workers: DataLoader worker processes per device (0 loads in the training process, best on small CPUs).
    """

    def __init__(
        self,
        path: str | None = None,
        pattern: str = "**/*",
        max_bytes: int = 4_000_000,
        block_size: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if block_size < 1:
            raise ValueError(f"`--data.block_size {block_size}` must be at least 1.")
        if batch_size < 1:
            raise ValueError(f"`--data.batch_size {batch_size}` must be at least 1.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`--data.val_fraction {val_fraction}` must lie strictly between 0 and 1.")
        if max_bytes < 0:
            raise ValueError(f"`--data.max_bytes {max_bytes}` must be 0 (no cap) or positive.")
        self.path = path
        self.pattern = pattern
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.tokenizer = ByteTokenizer()
        self.train_tokens: torch.Tensor | None = None
        self.val_tokens: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_tokens is not None:
            return
        data, where = load_corpus(self.path, self.max_bytes, self.pattern)
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        n_val = max(int(len(tokens) * self.val_fraction), self.block_size + 1)
        if n_val >= len(tokens) - self.block_size:
            raise ValueError(
                f"the corpus ({len(tokens):,} bytes) is too small for `--data.block_size {self.block_size}` and "
                f"`--data.val_fraction {self.val_fraction}`; use more data or a shorter block."
            )
        self.train_tokens, self.val_tokens = tokens[:-n_val], tokens[-n_val:]
        digest = hashlib.sha256(data).hexdigest()[:16]
        rank_zero_info(
            f"Corpus: {where}, {len(tokens):,} bytes ({len(self.train_tokens):,} train, {len(self.val_tokens):,} "
            f"validation), sha256 {digest}"
        )

    def make_dataset(self, tokens: torch.Tensor, train: bool) -> Dataset:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.make_dataset(self.train_tokens, train=True), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.make_dataset(self.val_tokens, train=False), shuffle=False)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        # Under DDP Lightning swaps in a DistributedSampler (keeping `shuffle`), so each rank reads its own share.
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def unigram_cross_entropy(self) -> float:
        """Validation loss (nats per byte) of the best model that ignores context: the training set's byte
        frequencies (add-one smoothed) scored on the validation bytes. A language model must beat it."""
        if self.train_tokens is None:
            self.setup()
        counts = torch.bincount(self.train_tokens.long(), minlength=256).double() + 1.0
        log_probs = (counts / counts.sum()).log()
        return float(-log_probs[self.val_tokens.long()].mean())


class CausalLMDataModule(TextDataModule):
    """Next-byte prediction windows (see :class:`TextDataModule` for the arguments)."""

    def make_dataset(self, tokens: torch.Tensor, train: bool) -> Dataset:
        return CausalLMDataset(tokens, self.block_size)


class MaskedLMDataModule(TextDataModule):
    """Masked-byte prediction windows.

    Args:
        mask_prob: share of the positions of a window that become prediction targets (BERT's 15%).
        val_seed: seed of the fixed validation masks.
    """

    def __init__(self, *args, mask_prob: float = 0.15, val_seed: int = 1234, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"`--data.mask_prob {mask_prob}` must lie in (0, 1].")
        self.mask_prob = mask_prob
        self.val_seed = val_seed

    def make_dataset(self, tokens: torch.Tensor, train: bool) -> Dataset:
        return MaskedLMDataset(tokens, self.block_size, self.mask_prob, seed=None if train else self.val_seed)
