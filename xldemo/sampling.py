"""From one step's logits to the next tokens: repetition penalty, temperature, top-k, top-p and min-p."""

import math

import torch


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float | list[float]) -> torch.Tensor:
    """CTRL-style: seen tokens' positive logits are divided by penalty and negative ones multiplied.
    logits (b, v), seen (b, v) bool; penalty a number, or a list of one per row."""
    per_row = isinstance(penalty, list)
    if all(p == 1.0 for p in (penalty if per_row else [penalty])):
        return logits
    if per_row:
        penalty = torch.tensor(penalty)[:, None]
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Sets to -inf what top-k, top-p (nucleus) and min-p rule out; the most likely token always survives."""
    if top_k > 0 and top_k < logits.shape[-1]:
        logits = _below(logits, torch.topk(logits, top_k, dim=-1).values[..., -1:])
    if top_p < 1.0:
        logits = _nucleus(logits, top_p)
    if min_p > 0.0:
        logits = _unlikely(logits, min_p)
    return logits


def filter_logits_apart(logits: torch.Tensor, settings: list) -> torch.Tensor:
    """filter_logits for rows (b, v) each with its own settings[i].top_k, top_p and min_p, in one pass for all: each
    row comes out as filter_logits gives it alone, to the bit."""
    v = logits.shape[-1]
    ks = [s.top_k if 0 < s.top_k < v else v for s in settings]  # v: no filter (the least logit is the v-th)
    if min(ks) < v:
        kth = torch.sort(logits, dim=-1, descending=True).values.gather(-1, torch.tensor(ks)[:, None] - 1)
        logits = _below(logits, kth)
    if any(s.top_p < 1.0 for s in settings):  # a row without one never drops: cumsum can round above 1
        logits = _nucleus(logits, torch.tensor([[s.top_p if s.top_p < 1.0 else math.inf] for s in settings]))
    if any(s.min_p > 0.0 for s in settings):
        logits = _unlikely(logits, torch.tensor([[s.min_p] for s in settings]))
    return logits


def _below(logits: torch.Tensor, kth: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(logits < kth, float("-inf"))


def _nucleus(logits: torch.Tensor, top_p) -> torch.Tensor:
    """top_p: a number, or a column (b, 1) of one per row."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # drop a token when the tokens more likely than it already reach top_p
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _unlikely(logits: torch.Tensor, min_p) -> torch.Tensor:
    """min_p: a number, or a column (b, 1) of one per row."""
    probs = logits.softmax(dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))


def choose_tokens(logits: torch.Tensor, seen: torch.Tensor, settings, generator: torch.Generator) -> torch.Tensor:
    """logits (b, v) -> token ids (b,), every row drawing from generator in turn. temperature 0 is greedy: the argmax
    after the repetition penalty."""
    return choose_tokens_apart(logits, seen, [settings] * len(logits), [generator] * len(logits))


def choose_tokens_apart(logits: torch.Tensor, seen: torch.Tensor, settings: list, generators: list[torch.Generator]
                        ) -> torch.Tensor:
    """choose_tokens for rows (b, v) of independent streams: row i with settings[i], drawing from generators[i], each
    as it would alone. Rows of different settings are filtered in one pass, their settings as columns, and every row
    then draws in one."""
    logits = logits.float()
    if len({(s.temperature, s.top_k, s.top_p, s.min_p, s.repetition_penalty) for s in settings}) == 1:
        return _choose(logits, seen, settings[0], generators)  # the engine's case, and a batch of one
    penalized = penalize_repeats(logits, seen, [s.repetition_penalty for s in settings])
    temperatures = torch.tensor([[s.temperature or 1.0] for s in settings])  # greedy rows: argmax, below
    probs = filter_logits_apart(penalized / temperatures, settings).softmax(dim=-1)
    drawn = [i for i, s in enumerate(settings) if s.temperature != 0]
    if len(drawn) == len(settings):
        return race(probs, exponential_noise(probs, generators))
    chosen = penalized.argmax(dim=-1)
    if drawn:
        chosen[drawn] = race(probs[drawn], exponential_noise(probs[drawn], [generators[i] for i in drawn]))
    return chosen


def _choose(logits: torch.Tensor, seen: torch.Tensor, settings, generators: list[torch.Generator]) -> torch.Tensor:
    """Token ids (b,) for float logits (b, v) of rows that share settings, row i drawing from generators[i]."""
    penalized = penalize_repeats(logits, seen, settings.repetition_penalty)
    if settings.temperature == 0:
        return penalized.argmax(dim=-1)
    probs = _probabilities(penalized, settings)
    return race(probs, exponential_noise(probs, generators))


def _probabilities(penalized: torch.Tensor, settings) -> torch.Tensor:
    return filter_logits(penalized / settings.temperature, settings.top_k, settings.top_p, settings.min_p).softmax(-1)


def exponential_noise(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One Exp(1) draw per token, like probs (b, v), row i from generators[i]."""
    noise = torch.empty_like(probs)
    for row, generator in zip(noise, generators):
        row.exponential_(generator=generator)
    return noise


def race(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The token of each row whose probability over its own Exp(1) draw is largest: token j wins with probability
    probs[j] (an exponential race: Exp(1) / p is exponential with rate p, and the least of independent exponentials
    is each one's with probability its rate over their sum). It draws as torch.multinomial does one sample, in three
    vector ops for all rows where multinomial costs 30 us a row on this CPU. A zero draw is raised to the least normal
    float, so that a ruled-out token (0 / 0) can never win."""
    return (probs / noise.clamp_(min=torch.finfo(noise.dtype).tiny)).argmax(dim=-1)
