"""Per-token details: a generated token's rank and alternatives, and what the query that produced it attended to,
memory included, named by absolute position in the text."""

from dataclasses import dataclass

import torch

from .errors import XLDemoError

TOP_TOKENS = 5  # alternatives reported per token
TOP_POSITIONS = 8  # attended positions reported per token


@dataclass(frozen=True)
class TokenDetails:
    """Figures of the forward pass that produced a token's logits, i.e. of the query at the position before it."""
    rank: int  # tokens the model found strictly more likely than this one: 0 is its first choice
    top: tuple[tuple[int, float], ...]  # the 5 most likely (token id, log-probability), most likely first
    memory_share: tuple[float, ...]  # per attention layer: attention on memory slots, mean over heads (0 to 1)
    # up to 8 (absolute position, attention averaged over heads and layers), highest first; a memory slot is named
    # by the position of the token whose hidden state it holds
    attended: tuple[tuple[int, float], ...]


def key_positions(query: int, keys: int, memory: int, seg_len: int, memory_tokens: int = 0) -> torch.Tensor:
    """The absolute text position held by each of a query's keys (-1 where none). The keys, as x-transformers lays
    them out: learned slots (memory key/values, zero or sink slots), the memory, the model's memory tokens, then the
    segment up to the query. The memory is the last `memory` of what earlier segments (each memory_tokens learned
    slots, then seg_len tokens) left, whichever layer it came from: every layer's memory holds the same tokens,
    since all are cut to one length and shift_mem_down only moves them between layers."""
    start, learned = query - query % seg_len, _learned_slots(query, keys, memory, seg_len, memory_tokens)
    per_segment = memory_tokens + seg_len
    slots = torch.arange(start // seg_len * per_segment - memory, start // seg_len * per_segment)
    offset = slots % per_segment - memory_tokens
    in_memory = torch.where(offset >= 0, slots // per_segment * seg_len + offset, -1)
    return torch.cat((torch.full((learned,), -1), in_memory, torch.full((memory_tokens,), -1),
                      torch.arange(start, query + 1)))


def token_details(log_probs: torch.Tensor, chosen: torch.Tensor, attention: torch.Tensor, query: int, memory: int,
                  seg_len: int, memory_tokens: int = 0) -> list[TokenDetails]:
    """One TokenDetails per row. log_probs (b, v) of the model's own distribution, chosen (b,) the tokens taken,
    attention (layers, b, h, keys) the probabilities of the query at position `query` (which predicted them), laid
    out as key_positions describes with `memory` memory slots per layer."""
    positions = key_positions(query, attention.shape[-1], memory, seg_len, memory_tokens)  # (keys,)
    ranks = (log_probs > log_probs.gather(-1, chosen[:, None])).sum(-1)  # (b,)
    top = log_probs.topk(min(TOP_TOKENS, log_probs.shape[-1]), dim=-1)  # (b, 5)
    per_layer = attention.float().mean(dim=2)  # (layers, b, keys): mean over heads
    learned = _learned_slots(query, attention.shape[-1], memory, seg_len, memory_tokens)
    shares = per_layer[..., learned:learned + memory].sum(-1).t()  # (b, layers)
    text = positions >= 0
    weights = per_layer.mean(dim=0)[:, text]  # (b, text keys): mean over heads and layers
    best = weights.topk(min(TOP_POSITIONS, weights.shape[-1]), dim=-1)  # (b, 8)
    best_positions = positions[text][best.indices]  # (b, 8)
    return [TokenDetails(rank, tuple(zip(ids, lps)), tuple(share), tuple(zip(pos, w)))
            for rank, ids, lps, share, pos, w in zip(ranks.tolist(), top.indices.tolist(), top.values.tolist(),
                                                     shares.tolist(), best_positions.tolist(), best.values.tolist())]


def token_record(token) -> dict:
    """A Token that carries details as plain JSON data: the entries of the CLI's "tokens" list."""
    details = token.details
    return {"id": token.id, "position": token.position, "segment": token.segment, "logprob": token.logprob,
            "rank": details.rank, "top": [list(pair) for pair in details.top],
            "memory_share": list(details.memory_share), "attended": [list(pair) for pair in details.attended]}


def _learned_slots(query: int, keys: int, memory: int, seg_len: int, memory_tokens: int) -> int:
    """Keys before the memory: whatever the memory, the memory tokens and the segment up to the query leave."""
    learned = keys - memory - memory_tokens - (query % seg_len + 1)
    if learned < 0:
        raise XLDemoError(f"the attention has {keys} keys, fewer than the {keys - learned} memory and segment "
                          "slots it should cover")
    return learned
