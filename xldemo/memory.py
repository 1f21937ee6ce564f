"""XL memory: what a finished segment leaves for the next, and a prompt folded into memory segment by segment."""

from typing import Iterator

import torch
from x_transformers import TransformerWrapper

Memory = list[torch.Tensor] | None  # per attention layer (b, m, d), or None for no memory


def next_memory(mems: Memory, hiddens: list[torch.Tensor], mem_len: int, shift_mem_down: int = 0) -> Memory:
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


def warm_up_memory(net: TransformerWrapper, tokens: torch.Tensor, mem_len: int, mems: Memory = None
                   ) -> Iterator[Memory]:
    """Runs tokens (b, n) through net one segment of max_seq_len at a time, each with the memory the ones before
    left, and yields the memory after each segment: the segmentation of the teacher-forced pass."""
    for start in range(0, tokens.shape[-1], net.max_seq_len):
        _, inter = net(tokens[:, start:start + net.max_seq_len], mems=mems, return_embeddings=True,
                       return_intermediates=True)
        mems = next_memory(mems, inter.hiddens, mem_len, net.shift_mem_down)
        yield mems


def memory_after(net: TransformerWrapper, tokens: torch.Tensor, mem_len: int) -> Memory:
    """The memory tokens (b, n) leave, n a whole number of segments (0 leaves none)."""
    mems = None
    for mems in warm_up_memory(net, tokens, mem_len):
        pass
    return mems
