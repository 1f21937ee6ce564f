"""The segmented teacher-forced pass: what XLAutoregressiveWrapper.forward computes, with its logits kept."""

import torch
import torch.nn.functional as F
from x_transformers import TransformerWrapper


@torch.no_grad()
def teacher_forced_logits(net: TransformerWrapper, tokens: torch.Tensor, memory: bool = True) -> torch.Tensor:
    """tokens (b, n) -> logits (b, n, vocab). Segments of max_seq_len are cut from position 0 and run in
    order, each with the mems (at most max_mem_len per layer) that x-transformers returned for the ones
    before; memory=False runs every segment on its own."""
    mems, out = None, []
    for chunk in tokens.split(net.max_seq_len, dim=-1):
        logits, new_mems = net(chunk, mems=mems, return_mems=True)
        mems = new_mems if memory else None
        out.append(logits)
    return torch.cat(out, dim=1)


def bits_per_token(net: TransformerWrapper, tokens: torch.Tensor, memory: bool = True) -> torch.Tensor:
    """tokens (b, n) -> bits (b, n - 1): the cost of predicting each token after the first."""
    logits = teacher_forced_logits(net, tokens[:, :-1], memory)
    nats = F.cross_entropy(logits.transpose(1, 2).float(), tokens[:, 1:], reduction="none")
    return nats / torch.log(torch.tensor(2.0))
