"""Decoders of the current segment: a KV-cached step at a time, and the memory a finished segment leaves."""

import torch
from x_transformers import TransformerWrapper

from .errors import XLDemoError
from .fast import FastDecoder


def next_memory(mems, hiddens, mem_len: int, shift_mem_down: int = 0):
    """The memory a segment leaves for the next one: per attention layer, the last mem_len of the previous
    memory followed by the segment's own layer inputs, as TransformerWrapper(return_mems=True) builds it
    (including its shift_mem_down rotation of the memory it was given). mem_len 0 is no memory."""
    if mem_len == 0:
        return None
    if mems is None:
        joined = hiddens
    else:
        rotated = mems[shift_mem_down:] + mems[:shift_mem_down]
        joined = [torch.cat((m, h), dim=-2) for m, h in zip(rotated, hiddens)]
    return [t[..., -mem_len:, :] for t in joined]  # (b, <= mem_len, d) each


class GenericDecoder:
    """Any x-transformers decoder, through its own modules and KV cache."""

    name = "generic"

    def __init__(self, net: TransformerWrapper):
        self.net = net

    def start(self, tokens: torch.Tensor, mems) -> torch.Tensor:
        """Opens a segment with its first tokens (b, n) and the memory before it; returns the last logits (b, v)."""
        self.mems, self.tokens = mems, tokens
        logits, self.cache = self.net(tokens, mems=mems, return_intermediates=True)
        self.hiddens = [[h] for h in self.cache.hiddens]
        return logits[:, -1]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Appends one token per row (b,) to the segment; returns its logits (b, v)."""
        # the wrapper embeds the whole segment (absolute positions need it) but attends only for the new token
        self.tokens = torch.cat((self.tokens, ids[:, None]), dim=-1)
        logits, self.cache = self.net(self.tokens, mems=self.mems, cache=self.cache, return_intermediates=True)
        for chunks, h in zip(self.hiddens, self.cache.hiddens):
            chunks.append(h)
        return logits[:, -1]

    def segment_hiddens(self) -> list[torch.Tensor]:
        """Per attention layer, the inputs of every token of the segment so far: (b, n, d)."""
        return [torch.cat(chunks, dim=-2) for chunks in self.hiddens]

    def memory_tokens(self) -> int:
        return 0 if self.mems is None else self.mems[0].shape[-2]


DECODERS = {"fast": FastDecoder, "generic": GenericDecoder}


def make_decoder(net: TransformerWrapper, choice: str = "auto"):
    """The fast decoder where it supports net's configuration (auto, fast), else x-transformers' own (auto,
    generic); "fast" on a configuration it does not support raises XLDemoError saying why."""
    if choice not in ("auto", *DECODERS):
        raise XLDemoError(f"decoder must be one of auto, {', '.join(DECODERS)}, got {choice!r}")
    if choice != "auto":
        return DECODERS[choice](net)
    try:
        return FastDecoder(net)
    except XLDemoError:
        return GenericDecoder(net)
