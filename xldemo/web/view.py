"""What a run looks like on the page, as HTML strings: the engine's events folded into segmented text and a status
line, and how often an update is worth sending. No gradio here."""

import math
import threading
import time
from collections.abc import Callable, Iterator

from ..checkpoint import Checkpoint
from ..details import token_record
from ..engine import Finished, GenerationSettings, SegmentStarted, Started, Token, WarmupProgress, segment_table
from ..errors import XLDemoError
from ..serving import generate
from ..tokenizer import BYTES
from . import render
from .memory_html import DetailedText

PROMPT_SHOWN_BYTES = 32 * 1024  # earlier prompt segments are folded into one line of the view
DETAILED_TOKENS = 4096  # the memory view shows at most this many prompt tokens, one span each
UPDATE_EVERY_S = 0.08  # at most this often a streamed update, besides the first token, boundaries and the end
# and all the server's streams together at most about this many a second (XLDEMO_UPDATES_PER_S): each update costs
# the server's process (gradio turns it into a message of the whole output) and the visitor's end a parse, however
# few tokens it adds. Up to two streams this changes nothing; 8 at once get one every 0.32 s each. Rounds of 8
# visitors through `python app.py`, 300 tokens each, in turns with a budget of 1000 (no stream spaced beyond 0.08 s),
# 2026-11-30: the server's process spent 0.54-0.67 CPU seconds a round against 0.84-0.99, the clients 0.13-0.17
# against 0.24-0.31 (14:11), and serving_check gave 3.24x, 3.40x, 3.20x against 3.08x, 3.03x, 3.02x (14:04-14:09)
UPDATES_PER_S = 25


class Run:
    """An engine run and its view: the prompt and generated text by segment, and a status line. Its events come from
    source(checkpoint, ids, settings), engine.generate's signature (default: serving.generate, the shared batch
    where it can take the run, else the engine)."""

    def __init__(self, checkpoint: Checkpoint, ids: list[int], settings: GenerationSettings, live_rate: bool = True,
                 colouring: str = "probability", source: Callable[..., Iterator] | None = None, processes: int = 0):
        """With settings.details the view is the memory view, its generated text coloured by `colouring`. processes:
        serving.generate's, the processes decoding the shared batches (0: this one)."""
        self.live_rate = live_rate
        # the prompt's view is built before the engine starts, so its clock does not count it
        seg_len = checkpoint.max_seq_len
        if settings.details:
            self.view = DetailedText(checkpoint.tokenizer, ids, seg_len, detailed_from(ids, seg_len, settings.mem_len
                                     if settings.mem_len is not None else checkpoint.max_mem_len), colouring)
        else:
            self.view = render.SegmentedText()
            render.add_prompt(self.view, render.split_segments(ids, seg_len, checkpoint.tokenizer.stream_decoder()),
                              PROMPT_SHOWN_BYTES)
        self.segment = (len(ids) - 1) // seg_len
        self.prompt_tokens, self.seg_len = len(ids), checkpoint.max_seq_len
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.text = ""
        self.details: list[dict] = []  # per token, as the CLI's --details writes them
        self.events = source(checkpoint, ids, settings) if source else generate(checkpoint, ids, settings,
                                                                                 processes=processes)
        self.started: Started | None = None
        self.finished: Finished | None = None
        self.warmup = (0, 0)
        self.first_token_at = None
        self.new_segment = False  # a generated segment opened since the last update

    def step(self) -> Started | WarmupProgress | Token | Finished | None:
        """Runs the engine to its next event worth showing; None once it has ended."""
        for event in self.events:
            if isinstance(event, Token):
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                self.view.add_token(event)
                self.token_ids.append(event.id)
                self.logprobs.append(event.logprob)
                self.text += event.text
                if event.details is not None:
                    self.details.append(token_record(event))
                return event
            if isinstance(event, SegmentStarted):
                if event.source == "generated":
                    self.view.open_segment(event.index)
                    self.segment, self.new_segment = event.index, True
                continue
            if isinstance(event, Started):
                self.started = event
            elif isinstance(event, WarmupProgress):
                self.warmup = (event.done, event.total)
            elif isinstance(event, Finished):
                self.finished = event
            return event
        return None

    @property
    def tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.token_ids)

    def due_now(self, event) -> bool:
        """Whether an update should go out whatever the throttle says: the prompt at the start, the first
        token, a new segment, the end."""
        return (isinstance(event, (Started, Finished)) or (isinstance(event, Token) and self.tokens == 1)
                or self.new_segment)

    def status(self) -> str:
        if self.finished:
            chips = render.generation_stats(self.finished, self.started)
            if not self.live_rate:  # interleaved runs share the clock, so their rates say little
                chips = [c for c in chips if c[1] not in ("tokens/s", "to first token")]
            return render.stats_line(chips)
        if self.first_token_at is None:
            done, total = self.warmup
            if total:
                return render.progress_line("warming up memory: prompt segment", done, total)
            return render.live_line([], "reading the prompt…")
        chips = [(f"{self.tokens}", "new tokens"), (f"segment {self.segment}", "")]
        elapsed = time.perf_counter() - self.first_token_at
        if self.live_rate and self.tokens > 1 and elapsed > 0:
            chips.append((f"{(self.tokens - 1) / elapsed:.1f}", "tokens/s"))
        return render.live_line(chips, "generating…")

    def data(self) -> dict:
        """The run so far as JSON-ready data, named as in the CLI's --json line; timings and the reason stay None
        until the end."""
        finished, started = self.finished, self.started
        return {"text": self.text, "token_ids": list(self.token_ids), "logprobs": list(self.logprobs),
                "segments": segment_table(self.prompt_tokens, self.prompt_tokens + len(self.token_ids), self.seg_len),
                "prompt_tokens": self.prompt_tokens,
                "seed": started and started.seed, "mem_len": started and started.mem_len,
                "decoder": started and started.decoder,
                "reason": finished and finished.reason,
                "warmup_s": finished and finished.warmup_s,
                "time_to_first_token_s": finished and finished.time_to_first_token_s,
                "decode_tokens_per_s": finished and _finite(finished.decode_tokens_per_s),
                **({"tokens": list(self.details)} if self.details else {})}

    def close(self) -> None:
        self.events.close()


def compare_status(on: Run, off: Run, settings: GenerationSettings) -> str:
    """The status line of a memory-on run and a memory-off run that take turns."""
    note = f"same seed {settings.seed}; memory {settings.mem_len} vs 0 tokens per layer; the runs take turns"
    if on.finished and off.finished:
        return render.stats_line([(f"{on.finished.segments}", "segments"),
                                  (f"{on.finished.memory_tokens}", "memory tokens with memory on"),
                                  (f"{off.finished.memory_tokens}", "off")], note)
    if on.first_token_at is None:
        return on.status()  # reading the prompt, warming memory up
    return render.live_line([(f"{on.tokens}", "tokens each")], note)


def token_unit(checkpoint: Checkpoint) -> str:
    """What the page calls a token: a byte, for byte models."""
    return "byte" if checkpoint.tokenizer.name == BYTES else "token"


def detailed_from(ids: list[int], seg_len: int, mem_len: int) -> int:
    """The first prompt position the memory view shows: all that the first generated tokens can attend to (their
    segment and the memory before it), at most DETAILED_TOKENS back."""
    segment_start = (len(ids) - 1) // seg_len * seg_len
    return max(0, segment_start - mem_len, len(ids) - DETAILED_TOKENS)


class Traffic:
    """The streams a server is updating at once, which share UPDATES_PER_S between them (see Throttle)."""

    def __init__(self, per_second: float = UPDATES_PER_S):
        if not per_second > 0:  # NaN too
            raise XLDemoError(f"updates a second must be above 0, got {per_second}")
        self.per_second, self.streams, self.lock = per_second, 0, threading.Lock()

    def add(self, streams: int) -> None:
        with self.lock:
            self.streams += streams

    def spacing(self) -> float:
        """Seconds between one stream's updates for all of them together to send per_second."""
        return self.streams / self.per_second


TRAFFIC = Traffic()  # this server's streams, whichever handler sends them


class Throttle:
    """Says when a streamed update is due: at most every `every` seconds, unless forced, no oftener than three
    times the last hand-over took (resumed), and no oftener than traffic's share of updates for each stream allows.
    gradio turns each update into its message, the whole of a JSON output, before it asks a run in the server's own
    process for more: a run whose update grows (per-token details) would otherwise spend ever more of its time
    waiting there. Used as a context, it counts as one of traffic's streams while the block runs, however it ends."""

    def __init__(self, every: float = UPDATE_EVERY_S, clock=time.perf_counter, traffic: Traffic | None = TRAFFIC):
        self.every, self.clock, self.traffic, self.last, self.away = every, clock, traffic, None, 0.0

    def __enter__(self) -> "Throttle":
        if self.traffic is not None:
            self.traffic.add(1)
        return self

    def __exit__(self, *exception) -> None:
        if self.traffic is not None:
            self.traffic.add(-1)

    def due(self, force: bool = False) -> bool:
        now = self.clock()
        spacing = max(self.every, 3 * self.away, self.traffic.spacing() if self.traffic is not None else 0.0)
        if force or self.last is None or now - self.last >= spacing:
            self.last = now
            return True
        return False

    def resumed(self) -> None:
        """The caller is back from handing over the update that due() let through."""
        self.away = self.clock() - self.last


def surprisal_views(checkpoint: Checkpoint, ids: list[int], bits_on: list[float], bits_off: list[float],
                    prompt_tokens: int) -> tuple[str, str, str, str]:
    """(summary with legends, memory-on view, memory-off view, bits-saved view) of scored ids."""
    seg_len = checkpoint.max_seq_len
    saved = [off - on for on, off in zip(bits_on, bits_off)]
    views = [render.coloured_html(render.byte_pieces(ids, values, seg_len, checkpoint.tokenizer.stream_decoder()),
                                  scale)
             for values, scale in ((bits_on, render.SURPRISAL), (bits_off, render.SURPRISAL),
                                   (saved, render.SAVING))]
    summary = render.surprisal_summary(bits_on, bits_off, seg_len, len(ids), prompt_tokens, token_unit(checkpoint))
    return summary + render.SURPRISAL.legend() + render.SAVING.legend(), *views


def _finite(value: float) -> float | None:
    """JSON has no NaN: a rate that cannot be measured (one token) is null."""
    return value if math.isfinite(value) else None
