"""From one step's logits to the next tokens: repetition penalty, temperature, top-k, top-p and min-p."""

import torch


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style: seen tokens' positive logits are divided by penalty and negative ones multiplied.
    logits (b, v), seen (b, v) bool."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Sets to -inf what top-k, top-p (nucleus) and min-p rule out; the most likely token always survives."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens more likely than it already reach top_p
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    return logits


def choose_tokens(logits: torch.Tensor, seen: torch.Tensor, settings, generator: torch.Generator) -> torch.Tensor:
    """logits (b, v) -> token ids (b,). temperature 0 is greedy: the argmax after the repetition penalty."""
    return choose_tokens_apart(logits, seen, settings, [generator])


def choose_tokens_apart(logits: torch.Tensor, seen: torch.Tensor, settings, generators: list[torch.Generator]
                        ) -> torch.Tensor:
    """choose_tokens for rows (b, v) of independent streams with one settings: row i draws from generators[i], as it
    would alone (one generator: every row draws from it, as choose_tokens does)."""
    logits = penalize_repeats(logits.float(), seen, settings.repetition_penalty)
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p, settings.min_p).softmax(-1)
    if len(generators) == 1:
        return torch.multinomial(probs, 1, generator=generators[0]).squeeze(-1)
    return torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generators)]).squeeze(-1)
