"""The segmented teacher-forced pass: what XLAutoregressiveWrapper.forward computes, with its logits kept."""

import torch
import torch.nn.functional as F
from x_transformers import TransformerWrapper

from .memory import next_memory


@torch.no_grad()
def teacher_forced_logits(net: TransformerWrapper, tokens: torch.Tensor, memory: bool = True,
                          mem_len: int | None = None) -> torch.Tensor:
    """tokens (b, n) -> logits (b, n, vocab). Segments of max_seq_len are cut from position 0 and run in
    order, each with the mems (at most max_mem_len per layer) that x-transformers returned for the ones
    before; memory=False runs every segment on its own. mem_len: a memory of that length instead of the model's
    own, which x-transformers cannot cut, cut as the engine cuts it (memory.next_memory)."""
    mems, out = None, []
    for chunk in tokens.split(net.max_seq_len, dim=-1):
        if mem_len is None:
            logits, new_mems = net(chunk, mems=mems, return_mems=True)
        else:
            logits, inter = net(chunk, mems=mems, return_intermediates=True)
            new_mems = next_memory(mems, inter.hiddens, mem_len, net.shift_mem_down)
        mems = new_mems if memory else None
        out.append(logits)
    return torch.cat(out, dim=1)


def bits_per_token(net: TransformerWrapper, tokens: torch.Tensor, memory: bool = True) -> torch.Tensor:
    """tokens (b, n) -> bits (b, n - 1): the cost of predicting each token after the first."""
    logits = teacher_forced_logits(net, tokens[:, :-1], memory)
    nats = F.cross_entropy(logits.transpose(1, 2).float(), tokens[:, 1:], reduction="none")
    return nats / torch.log(torch.tensor(2.0))


@torch.no_grad()
def teacher_forced_attention(net: TransformerWrapper, tokens: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens (b, n) -> logits (b, n, vocab), attention (b, n, layers, n) and memory share (b, n, layers) of the
    segmented pass, from x-transformers' own attention probabilities (post_softmax_attn; net built with
    attn_flash=False). attention[:, q, l, p] is what query q gave, in attention layer l and averaged over heads,
    to the key holding token p, in its segment or in memory; NaN where p is not among q's keys. Each memory slot's
    token is followed as x-transformers builds mems: rotated by shift_mem_down, joined with the segment, cut."""
    b, n = tokens.shape
    shift, extra = net.shift_mem_down, net.num_memory_tokens  # extra: memory tokens before each segment
    mems, slots, logits_out = None, None, []
    attention, shares = None, None
    for start in range(0, n, net.max_seq_len):
        chunk = tokens[:, start:start + net.max_seq_len]
        logits, inter = net(chunk, mems=mems, return_mems=True, return_intermediates=True)
        layers = inter.attn_intermediates
        if attention is None:
            attention = torch.full((b, n, len(layers), n), float("nan"))
            shares = torch.zeros(b, n, len(layers))
            slots = [[] for _ in layers]
        slots = slots[shift:] + slots[:shift]
        own = [-1] * extra + list(range(start, start + chunk.shape[1]))  # -1: a memory token, no text
        for layer, (inter_layer, memory) in enumerate(zip(layers, slots)):
            if inter_layer.post_softmax_attn is None:
                raise ValueError("x-transformers returned no attention probabilities: build net with attn_flash=False")
            probs = inter_layer.post_softmax_attn.mean(dim=1)[:, extra:]  # (b, chunk, keys): text queries only
            learned = probs.shape[-1] - len(memory) - len(own)  # memory key/values and such come first
            columns = torch.tensor([-1] * learned + memory + own)
            text = columns >= 0
            for query in range(chunk.shape[1]):
                visible = text & (columns <= start + query)
                attention[:, start + query, layer, columns[visible]] = probs[:, query, visible]
            shares[:, start:start + chunk.shape[1], layer] = probs[..., learned:learned + len(memory)].sum(-1)
        slots = [(memory + own)[-net.max_mem_len:] for memory in slots]
        mems = inter.mems
        if [len(s) for s in slots] != [m.shape[-2] for m in mems]:
            raise ValueError("the slots followed do not match the memory x-transformers returned")
        logits_out.append(logits)
    return torch.cat(logits_out, dim=1), attention, shares
