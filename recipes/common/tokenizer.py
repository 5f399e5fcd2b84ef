"""Byte-level tokenizer: every UTF-8 byte is a token, plus a few special tokens above 255."""

from __future__ import annotations

import torch


class ByteTokenizer:
    """Token ids 0-255 are bytes; ``pad_id``, ``mask_id`` and ``eos_id`` follow. Nothing to train or download.

    ``vocab_size`` (259) counts every id the tokenizer can emit; models round it up for their embedding tables.
    """

    num_bytes = 256
    pad_id = 256
    mask_id = 257
    eos_id = 258
    vocab_size = 259

    def encode(self, text: str) -> torch.Tensor:
        """UTF-8 bytes of ``text`` as a 1-D int64 tensor."""
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Bytes back to text; special ids are dropped and invalid UTF-8 is replaced (samples can cut a character)."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return bytes(i for i in values if 0 <= i < self.num_bytes).decode("utf-8", errors="replace")
