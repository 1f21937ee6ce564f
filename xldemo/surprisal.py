"""Per-byte surprisal of a text with memory and without: what memory buys, byte by byte."""

import torch

from .checkpoint import Checkpoint
from .teacher import bits_per_token


@torch.inference_mode()
def surprisal_bits(checkpoint: Checkpoint, ids: list[int], memory: bool) -> list[float]:
    """Bits the model spends on each of ids[1:], segments cut as in training, memory on or off."""
    tokens = torch.tensor([ids], dtype=torch.long)  # (1, n)
    return bits_per_token(checkpoint.model, tokens, memory=memory)[0].tolist()
