"""The generation engine: a plain generator of events that samples exactly what the segmented teacher-forced
pass predicts, warming memory up over the prompt and decoding the current segment with a KV cache."""

import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from .checkpoint import Checkpoint
from .decoders import DECODERS, Decoder, make_decoder
from .details import TokenDetails, token_details
from .errors import XLDemoError
from .memory import next_memory, warm_up_memory
from .options import setting
from .sampling import choose_tokens


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = setting(256, "tokens to generate at most")
    temperature: float = setting(1.0, "sampling temperature; 0 is greedy")
    top_k: int = setting(0, "keep the k most likely tokens; 0 is off")
    top_p: float = setting(1.0, "keep the most likely tokens up to this probability (nucleus); 1 is off")
    min_p: float = setting(0.0, "drop tokens below this fraction of the most likely one's probability; 0 is off")
    repetition_penalty: float = setting(1.0, "CTRL-style penalty on tokens already seen; 1 is off")
    seed: int | None = setting(None, "random seed (default: drawn, and reported in Started and the JSON)")
    eos_id: int | None = setting(None, "token id that ends generation (default: the tokenizer's end-of-text token, "
                                       "if it names one)", flag="--eos", metavar="ID")
    stop: tuple[str, ...] = setting((), "string that ends generation (repeatable)", metavar="STR")
    mem_len: int | None = setting(None, "memory length (default: the model's max_mem_len; 0: no memory)")
    num_samples: int = setting(1, "samples decoded as one batch (only the first streams)")
    decoder: str = setting("auto", "decoding path; auto: the fastest exact path for the model",
                           choices=("auto", *DECODERS))
    details: bool = setting(False, "per token, from the pass that produced it: its rank, the 5 likeliest tokens, and "
                                   "its attention on memory and on the most attended positions")

    def __post_init__(self):
        def bad(name, rule):
            raise XLDemoError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            bad("max_new_tokens", "an integer >= 1")
        if not _is_number(self.temperature) or self.temperature < 0:
            bad("temperature", "a number >= 0")
        if not _is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "an integer >= 0")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "in (0, 1]")
        if not _is_number(self.min_p) or not 0 <= self.min_p < 1:
            bad("min_p", "in [0, 1)")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", "a number > 0")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            bad("seed", "an integer in [0, 2^63)")
        if self.eos_id is not None and (not _is_int(self.eos_id) or self.eos_id < 0):
            bad("eos_id", "a token id >= 0")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "a list of non-empty strings")
        if self.mem_len is not None and (not _is_int(self.mem_len) or self.mem_len < 0):
            bad("mem_len", "an integer >= 0")
        if not _is_int(self.num_samples) or not 1 <= self.num_samples <= 64:
            bad("num_samples", "an integer in [1, 64]")
        if self.decoder not in ("auto", *DECODERS):
            bad("decoder", f"one of auto, {', '.join(DECODERS)}")
        if not isinstance(self.details, bool):
            bad("details", "True or False")


# events, in the order a run yields them: Started, then SegmentStarted / WarmupProgress / Token, then Finished

@dataclass(frozen=True)
class Started:
    decoder: str  # which decoding path runs: "fast", "generic" or "uncached"
    prompt_tokens: int
    segment_len: int
    mem_len: int
    seed: int


@dataclass(frozen=True)
class SegmentStarted:
    index: int
    start: int  # absolute position of its first token
    source: str  # "prompt" or "generated": where its first token came from


@dataclass(frozen=True)
class WarmupProgress:
    done: int  # complete prompt segments folded into memory so far
    total: int


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # the text this token completes; "" while a UTF-8 character is still incomplete
    logprob: float  # under the model's own distribution, before any sampling adjustment
    position: int
    segment: int
    sample: int = 0
    logits: torch.Tensor | None = field(default=None, repr=False, compare=False)  # only with keep_logits
    details: TokenDetails | None = None  # only with settings.details


@dataclass(frozen=True)
class Finished:
    reasons: tuple[str, ...]  # per sample: "length", "eos" or "stop"
    token_ids: tuple[tuple[int, ...], ...]  # per sample, prompt excluded
    texts: tuple[str, ...]
    warmup_s: float
    time_to_first_token_s: float
    decode_tokens_per_s: float
    segments: int
    memory_tokens: int  # hidden states per layer held in memory at the end

    @property
    def reason(self) -> str:
        return self.reasons[0]


def generate(checkpoint: Checkpoint, prompt_ids, settings: GenerationSettings | None = None,
             keep_logits: bool = False) -> Iterator[Started | SegmentStarted | WarmupProgress | Token | Finished]:
    """Yields events as they happen. Closing the generator stops the computation."""
    prompt, settings = resolve(checkpoint, prompt_ids, settings or GenerationSettings())
    return _run(checkpoint, prompt, settings, keep_logits)


def resolve(checkpoint: Checkpoint, prompt_ids, settings: GenerationSettings
            ) -> tuple[torch.Tensor, GenerationSettings]:
    """The prompt as a (1, n) tensor checked against the vocabulary, and settings with the defaults that depend on
    the checkpoint or on chance filled in: the tokenizer's end-of-text token as EOS, the model's memory length, a
    drawn seed. Whatever decodes a run (this engine, the serving scheduler) starts from these."""
    prompt, vocab = _prompt_tensor(prompt_ids, checkpoint), checkpoint.model.num_tokens
    eos_id = checkpoint.tokenizer.eos_id if settings.eos_id is None else settings.eos_id
    if eos_id is not None and eos_id >= vocab:
        raise XLDemoError(f"eos_id must be below the vocabulary size {vocab}, got {eos_id}")
    return prompt, replace(settings, eos_id=eos_id,
                           mem_len=checkpoint.max_mem_len if settings.mem_len is None else settings.mem_len,
                           seed=random.SystemRandom().randrange(2**63) if settings.seed is None else settings.seed)


class SampleText:
    """One sample's tokens and text as they come: what each token adds to the text, and why the sample ends."""

    def __init__(self, tokenizer, settings: GenerationSettings):
        self.stream, self.settings = tokenizer.stream_decoder(), settings
        self.ids: list[int] = []
        self.text, self.reason = "", None

    def add(self, token: int) -> str:
        """The text token completes; a token that ends the sample (see reason) brings what an unfinished character
        leaves behind with it."""
        self.ids.append(token)
        piece = "" if token == self.settings.eos_id else self.stream.push(token)
        self.text += piece
        self.reason = _finish_reason(token, self.text, len(piece), len(self.ids), self.settings)
        if self.reason is not None:
            tail = self.stream.flush()
            self.text, piece = self.text + tail, piece + tail
        return piece


@torch.inference_mode()
def _run(checkpoint: Checkpoint, prompt: torch.Tensor, settings: GenerationSettings, keep_logits: bool):
    net, seg_len, mem_len = checkpoint.model, checkpoint.max_seq_len, settings.mem_len
    generator = torch.Generator().manual_seed(settings.seed)
    decoder = make_decoder(net, settings.decoder, attention=settings.details)
    batch, length = settings.num_samples, prompt.shape[-1]
    yield Started(decoder.name, length, seg_len, mem_len, settings.seed)
    started = time.perf_counter()  # after the yield: a consumer's own work on Started is not ours to time

    # warm up: every prompt segment before the one holding the prompt's last token, one forward each
    current = (length - 1) // seg_len
    mems = None
    warm_up = warm_up_memory(net, prompt[:, :current * seg_len], mem_len)
    for index in range(current):
        yield SegmentStarted(index, index * seg_len, "prompt")
        mems = next(warm_up)
        yield WarmupProgress(index + 1, current)
    warmup_s = time.perf_counter() - started

    yield SegmentStarted(current, current * seg_len, "prompt")
    mems = None if mems is None else [m.expand(batch, -1, -1) for m in mems]
    logits = decoder.start(prompt[:, current * seg_len:].expand(batch, -1), mems)  # (b, v)

    seen = torch.zeros(batch, net.num_tokens, dtype=torch.bool)
    seen[:, prompt[0]] = True
    samples = [SampleText(checkpoint.tokenizer, settings) for _ in range(batch)]
    first_token_at = last_token_at = None
    position = length
    for _ in range(settings.max_new_tokens):
        chosen = choose_tokens(logits, seen, settings, generator)
        log_probs = logits.float().log_softmax(dim=-1)  # (b, v)
        logprobs = log_probs.gather(-1, chosen[:, None]).squeeze(-1)
        # the query at position - 1 produced these logits
        details = token_details(log_probs, chosen, decoder.attention(), position - 1, decoder.memory_tokens(), seg_len,
                                net.num_memory_tokens) if settings.details else [None] * batch
        seen[torch.arange(batch), chosen] = True
        if position % seg_len == 0:
            yield SegmentStarted(position // seg_len, position, "generated")
        for s, sample in enumerate(samples):
            if sample.reason is not None:
                continue
            token = int(chosen[s])
            piece = sample.add(token)
            yield Token(token, piece, float(logprobs[s]), position, position // seg_len, s,
                        logits[s].clone() if keep_logits else None, details[s])
        last_token_at = time.perf_counter()
        first_token_at = first_token_at or last_token_at
        if all(sample.reason is not None for sample in samples):
            break
        logits = _feed(decoder, net, chosen, position, seg_len, mem_len)
        position += 1

    yield Finished(tuple(s.reason for s in samples), tuple(tuple(s.ids) for s in samples),
                   tuple(s.text for s in samples), warmup_s, first_token_at - started,
                   decode_rate(len(samples[0].ids), first_token_at, last_token_at), position // seg_len + 1,
                   decoder.memory_tokens())


def decode_rate(tokens: int, first_token_at: float, last_token_at: float) -> float:
    """Tokens per second after the first, which waits on the warm-up; NaN where that cannot be measured."""
    decoded, elapsed = tokens - 1, last_token_at - first_token_at
    return decoded / elapsed if decoded > 0 and elapsed > 0 else math.nan


def segment_table(prompt_len: int, total_len: int, seg_len: int) -> list[dict]:
    """One entry per segment of a sequence: where it starts and how many prompt and generated tokens it holds."""
    table = []
    for start in range(0, total_len, seg_len):
        end = min(start + seg_len, total_len)
        prompt = max(0, min(end, prompt_len) - start)
        table.append({"index": start // seg_len, "start": start, "prompt_tokens": prompt,
                      "generated_tokens": end - start - prompt})
    return table


def _feed(decoder: Decoder, net, chosen: torch.Tensor, position: int, seg_len: int, mem_len: int) -> torch.Tensor:
    """Runs the token just chosen for `position`; a token that opens a segment starts it with the memory the
    finished segment leaves, exactly as the teacher-forced pass builds it."""
    if position % seg_len == 0:
        mems = next_memory(decoder.mems, decoder.segment_hiddens(), mem_len, net.shift_mem_down)
        return decoder.start(chosen[:, None], mems)
    return decoder.step(chosen)


def _finish_reason(token: int, text: str, new_chars: int, count: int, settings: GenerationSettings) -> str | None:
    """Why a sample ends with this token, its count-th, whose text ends `text` with new_chars characters; None
    while it goes on."""
    if token == settings.eos_id:
        return "eos"
    # only the last few characters can complete a stop string that was not there before
    if any(stop in text[-(len(stop) + new_chars):] for stop in settings.stop if new_chars):
        return "stop"
    if count == settings.max_new_tokens:
        return "length"
    return None


def _prompt_tensor(prompt_ids, checkpoint: Checkpoint) -> torch.Tensor:
    """(1, n) long tensor of the prompt, checked against the vocabulary."""
    ids = torch.as_tensor(list(prompt_ids), dtype=torch.long).reshape(1, -1)
    if ids.numel() == 0:
        raise XLDemoError("the prompt is empty")
    if ids.min() < 0 or ids.max() >= checkpoint.model.num_tokens:
        raise XLDemoError(f"prompt token ids must be in [0, {checkpoint.model.num_tokens})")
    return ids


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
