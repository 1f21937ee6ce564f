"""Serving many visitors at once: per checkpoint, one thread decodes every stream in one batch that streams join and
leave between steps; each stream reads as a generator of the engine's own events. The thread runs in this process,
or (apart) in a child process of its own that worker.py runs and talks to."""

import atexit
import hashlib
import queue
import threading
import time
import weakref
from collections import OrderedDict

import torch

from .batched import BatchedDecoder, RowState
from .checkpoint import Checkpoint
from .engine import (Finished, GenerationSettings, SampleText, SegmentStarted, Started, Token, WarmupProgress,
                     decode_rate, resolve)
from .engine import generate as engine_generate
from .fast import unsupported_reason
from .memory import warm_up_memory
from .sampling import choose_tokens_apart

MAX_BATCH = 8  # streams decoded at once per checkpoint's batch; more wait for a row
MAX_PROCESSES = 4  # a server's decoding processes per checkpoint, at most, by default (see default_processes)
PREFIX_CACHE_SIZE = 8  # warmed-up prompt memories kept per checkpoint, least recently used dropped first
# whole prompts' rows as their prefill leaves them (up to 12 MB each for the shipped model), kept likewise: a
# visitor who sends a prompt seen lately (an example) starts decoding at once, with no arithmetic for the prompt
PROMPT_CACHE_SIZE = 4
SCHEDULERS = 4  # checkpoints with a scheduler at once
CANCEL_WAIT_S = 30  # how long closing a stream waits for its row to be freed
# a stream's events go to its reader in bunches at most this often once its tokens flow (the first token and the end
# at once): each hand-over wakes a reader thread, which then competes with the decoding thread for the interpreter
SEND_EVERY_S = 0.04
_reasons: "weakref.WeakKeyDictionary[torch.nn.Module, str | None]" = weakref.WeakKeyDictionary()
_schedulers: OrderedDict = OrderedDict()  # by (id of the model, which each scheduler holds, apart)
_registry = threading.Lock()
_every_scheduler: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()
STOP_WAIT_S = 5  # how long the interpreter's exit waits for a step to end


@atexit.register
def _stop_schedulers() -> None:
    """A daemon thread still inside torch when the interpreter shuts down aborts the process (C++ terminate): a
    script that exits with a stream still open would end with SIGABRT. The decoding threads stop first."""
    for scheduler in list(_every_scheduler):
        scheduler.stop()


def generate(checkpoint: Checkpoint, prompt_ids, settings: GenerationSettings | None = None,
             keep_logits: bool = False, processes: int = 0):
    """engine.generate's events and tokens, the stream decoded in its checkpoint's shared batch where the batched
    decoder can run it, else by engine.generate itself. processes: 0 decodes the batch in this process, n in n
    processes of their own, each with its own batch (a server's choice: see worker.py)."""
    settings = settings or GenerationSettings()
    if batched_unsupported(checkpoint, settings) is not None:
        return engine_generate(checkpoint, prompt_ids, settings, keep_logits)
    return scheduler_for(checkpoint, processes).generate(prompt_ids, settings, keep_logits)


def default_processes() -> int:
    """Decoding processes for a server: one per core torch would use, at most MAX_PROCESSES. A batch's step runs on
    one core faster than on two (see Scheduler._loop), so a second core serves visitors best as a second batch."""
    return max(1, min(MAX_PROCESSES, torch.get_num_threads()))


def process_threads(processes: int) -> int:
    """torch threads for each of a server's decoding processes: the cores torch would use, less one for the server's
    own threads, shared out; at least one."""
    return max(1, (torch.get_num_threads() - 1) // max(1, processes))


def batched_unsupported(checkpoint: Checkpoint, settings: GenerationSettings) -> str | None:
    """None when the run can join the shared batch, else why not."""
    if settings.num_samples > 1:
        return "several samples decode as a batch of their own"
    if settings.details:
        return "per-token details need a decoder that keeps attention"
    if settings.decoder not in ("auto", "fast"):
        return f"the {settings.decoder} decoder was asked for"
    net = checkpoint.model
    if net not in _reasons:  # building the meta-device template each time would cost milliseconds per request
        _reasons[net] = unsupported_reason(net)
    return _reasons[net]


def scheduler_for(checkpoint: Checkpoint, processes: int = 0):
    """The scheduler of checkpoint's model, made on first use: a Scheduler in this process, or for processes >= 1 a
    worker.DecodePool of that many child processes. The least recently used beyond SCHEDULERS are dropped (one still
    serving finishes its streams first)."""
    from .worker import DecodePool  # worker builds on this module

    key = (id(checkpoint.model), processes)
    with _registry:
        found = _schedulers.get(key)
        if found is None or found.checkpoint.model is not checkpoint.model or found.ended:
            # a child that could not start would not start the next time either: the batch stays in this process
            failed = found is not None and found.checkpoint.model is checkpoint.model and found.failed_to_start
            if found is not None and found.ended:
                found.retire()  # its children still serving finish their streams, then end
            found = DecodePool(checkpoint, processes) if processes and not failed else Scheduler(checkpoint)
            _schedulers[key] = found
        _schedulers.move_to_end(key)
        while len(_schedulers) > SCHEDULERS:
            _, dropped = _schedulers.popitem(last=False)
            if isinstance(dropped, DecodePool):
                dropped.retire()
        return found


def read_events(events: queue.SimpleQueue):
    """The events of a stream whose lists of events, or the exception that ends it, come through events."""
    while True:
        told = events.get()
        if isinstance(told, Exception):
            raise told
        yield from told
        if isinstance(told[-1], Finished):
            return


def prompt_keys(prompt: torch.Tensor, seg_len: int, mem_len: int) -> tuple[tuple, tuple]:
    """(key, whole) of a prompt (1, n) decoded with memory mem_len: its warm-up's result depends on the key alone
    (the prompt's complete segments), its prefill's on the whole (all of it)."""
    ids = prompt[0].numpy()
    complete = (ids.shape[-1] - 1) // seg_len * seg_len  # up to the segment holding the prompt's last token
    digest = hashlib.sha256(ids[:complete].tobytes())
    key = (mem_len, digest.hexdigest())
    digest.update(ids[complete:].tobytes())  # then the rest: one pass over the prompt for both
    return key, (mem_len, digest.hexdigest())


class _Request:
    """One stream: its settings and sampling state, where it is in its warm-up, and the queue its events go to."""

    def __init__(self, prompt: torch.Tensor, settings: GenerationSettings, keep_logits: bool, checkpoint: Checkpoint,
                 events=None, released=None):
        """settings as engine.resolve fills them in. events: where lists of events go (.put), and the exception that
        ends the stream; released (.set): told when the stream has left the batch. By default a queue and an event
        of this process's."""
        seg_len, mem_len = checkpoint.max_seq_len, settings.mem_len
        self.prompt, self.settings, self.mem_len, self.keep_logits = prompt, settings, mem_len, keep_logits
        self.current = (prompt.shape[-1] - 1) // seg_len  # the segment holding the prompt's last token
        self.key, self.whole = prompt_keys(prompt, seg_len, mem_len)
        self.state = None  # (row state, logits) when the whole prompt's prefill was cached
        self.events = queue.SimpleQueue() if events is None else events
        self.pending, self.sent_at = [], 0.0
        self.cancelled, self.released = False, threading.Event() if released is None else released
        self.warm_up, self.mems, self.warmed = None, None, 0
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.seen = torch.zeros(1, checkpoint.model.num_tokens, dtype=torch.bool)
        self.seen[:, prompt[0]] = True
        self.sample = SampleText(checkpoint.tokenizer, settings)
        self.position, self.chosen = prompt.shape[-1], None
        self.started = self.warmup_s = self.first_token_at = self.last_token_at = None

    @property
    def warm(self) -> bool:
        return self.warmed == self.current

    def tell(self, event) -> None:
        self.pending.append(event)

    def send(self, now: float, force: bool = False) -> None:
        """Hands the events told so far to the reader, if it is time (see SEND_EVERY_S)."""
        if self.pending and (force or len(self.sample.ids) <= 1 or now - self.sent_at >= SEND_EVERY_S):
            self.events.put(self.pending)
            self.pending, self.sent_at = [], now


class Scheduler:
    """The thread that owns a checkpoint's batched decoder. Each iteration: drops closed streams, runs one prompt
    segment of one stream's warm-up, admits one warmed-up stream into the batch (the prefill of its last, partial
    prompt segment), then decodes one token for every stream in the batch. A warm-up's memory is cached by the
    prompt's complete segments and the memory length, so that visitors who send the same prompt share it; the row
    its prefill leaves is cached by the whole prompt and the memory length, so that the next such visitor's row is a
    copy. The thread ends when nothing is left to do and starts again with the next stream."""

    failed_to_start, ended = False, None  # as a DecodePool says them: in this process, it runs and does not end

    def __init__(self, checkpoint: Checkpoint, max_batch: int = MAX_BATCH, cache_size: int = PREFIX_CACHE_SIZE,
                 prompt_cache_size: int = PROMPT_CACHE_SIZE, threads: int | None = None, on_warm_up=None):
        """threads: torch threads of the decoding thread (default: one fewer than torch's choice, at least one).
        on_warm_up(key, memory): told of each warm-up this scheduler runs, which another may take (offer_prefix)."""
        self.checkpoint, self.max_batch, self.cache_size = checkpoint, max_batch, cache_size
        self.threads, self.on_warm_up = threads, on_warm_up
        self.offered: queue.SimpleQueue = queue.SimpleQueue()  # (key, memory) of warm-ups run elsewhere
        self.prompt_cache_size = prompt_cache_size
        # buffers for a full batch from the start (100 MB for the shipped model): growing them when visitors arrive
        # together copied the live rows over three times, a pause of 110 ms for all of them
        self.decoder = BatchedDecoder(checkpoint.model, capacity=max_batch)
        self.rows: list[_Request] = []  # by the decoder's row
        self.waiting: list[_Request] = []  # warming up or waiting for a row, in arrival order
        self.prefixes: OrderedDict[tuple, list[torch.Tensor] | None] = OrderedDict()
        self.prompts: OrderedDict[tuple, tuple[RowState, torch.Tensor]] = OrderedDict()
        self.warming: dict[tuple, _Request] = {}  # key -> the stream warming it up; others with its key wait
        self.lock, self.thread, self.stopping = threading.Lock(), None, False
        _every_scheduler.add(self)

    def generate(self, prompt_ids, settings: GenerationSettings, keep_logits: bool = False):
        """engine.generate for one stream of this scheduler's checkpoint (settings the batch supports)."""
        prompt, settings = resolve(self.checkpoint, prompt_ids, settings)
        return self._stream(_Request(prompt, settings, keep_logits, self.checkpoint))

    def live(self) -> tuple[int, int]:
        """(streams in the batch, streams waiting or warming up)."""
        with self.lock:
            return len(self.rows), len(self.waiting)

    def submit(self, request: _Request) -> None:
        """Starts request's clock and puts it in line; its events go to request.events."""
        request.started = time.perf_counter()
        with self.lock:
            self.waiting.append(request)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="xldemo-scheduler", daemon=True)
                self.thread.start()

    def offer_prefix(self, key: tuple, memory) -> None:
        """A warm-up another scheduler of the same model ran (its on_warm_up): the decoding thread caches it before
        it next looks for one, so that a visitor with that prompt here is not warmed up again (same model, same
        arithmetic: the same bits)."""
        self.offered.put((key, memory))

    def _stream(self, request: _Request):
        yield Started(self.decoder.name, request.prompt.shape[-1], self.checkpoint.max_seq_len, request.mem_len,
                      request.settings.seed)
        self.submit(request)  # after the yield, as the engine starts its clock
        try:
            yield from read_events(request.events)
        finally:  # closed early (Stop, a closed tab): the row is free before this returns
            request.cancelled = True
            request.released.wait(CANCEL_WAIT_S)

    def stop(self) -> None:
        """Ends the decoding thread after its current step; streams still open hear nothing more, and closing
        them does not wait."""
        self.stopping = True
        thread = self.thread
        if thread is not None:
            thread.join(STOP_WAIT_S)
        for request in self.rows + self.waiting:
            request.released.set()

    def _loop(self) -> None:
        # one core fewer than torch's choice: the server's threads streaming the results to visitors need one, and a
        # parallel region waiting for a busy core costs more than the core adds (torch's setting is per thread)
        torch.set_num_threads(self.threads or process_threads(1))
        while True:
            with self.lock:
                self._drop_cancelled()
                if self.stopping or not self.rows and not self.waiting:
                    self.thread = None
                    return
            try:
                with torch.inference_mode():
                    self._iteration()
            except Exception as e:  # a fault of ours: every stream hears of it rather than hanging
                self._fail_all(e)

    def _iteration(self) -> None:
        self._warm_up_one()
        self._admit_one()
        if self.rows:
            self._take(self.decoder.step(torch.tensor([r.chosen for r in self.rows])), range(len(self.rows)))
        now = time.perf_counter()
        for request in self.rows + self.waiting:
            request.send(now)

    def _drop_cancelled(self) -> None:
        for row in reversed(range(len(self.rows))):
            if self.rows[row].cancelled:
                self._release(row)
        for request in [r for r in self.waiting if r.cancelled]:
            self.waiting.remove(request)
            if self.warming.get(request.key) is request:
                del self.warming[request.key]
            request.released.set()

    def _warm_up_one(self) -> None:
        """One prompt segment for the waiting stream with the fewest done (taking turns), or a cached warm-up (or
        prefill)."""
        while not self.offered.empty():
            key, memory = self.offered.get()
            self._cache_prefix(key, memory)
        for request in self.waiting:
            if request.warm or request.warm_up is not None:
                continue
            request.state = self._cached_prompt(request)  # the whole prompt's prefill: no warm-up needed
            if request.state is None and request.key in self.prefixes:
                self.prefixes.move_to_end(request.key)
                request.mems = self.prefixes[request.key]
            elif request.state is None:
                continue
            for index in range(request.current):
                request.tell(SegmentStarted(index, index * self.checkpoint.max_seq_len, "prompt"))
                request.tell(WarmupProgress(index + 1, request.current))
            request.warmed = request.current
        ready = [r for r in self.waiting if not r.warm and self.warming.setdefault(r.key, r) is r]
        if not ready:
            return
        request = min(ready, key=lambda r: r.warmed)
        seg_len = self.checkpoint.max_seq_len
        if request.warm_up is None:
            request.warm_up = warm_up_memory(self.checkpoint.model, request.prompt[:, :request.current * seg_len],
                                             request.mem_len)
        index = request.warmed
        request.tell(SegmentStarted(index, index * seg_len, "prompt"))
        request.mems = next(request.warm_up)
        request.warmed += 1
        request.tell(WarmupProgress(request.warmed, request.current))
        if request.warm:
            del self.warming[request.key]
            self._cache_prefix(request.key, request.mems)
            if self.on_warm_up is not None:
                self.on_warm_up(request.key, request.mems)

    def _cache_prefix(self, key: tuple, memory) -> None:
        self.prefixes[key] = memory
        self.prefixes.move_to_end(key)
        while len(self.prefixes) > self.cache_size:
            self.prefixes.popitem(last=False)

    def _cached_prompt(self, request: _Request) -> tuple[RowState, torch.Tensor] | None:
        found = self.prompts.get(request.whole)
        if found is not None:
            self.prompts.move_to_end(request.whole)
        return found

    def _admit_one(self) -> None:
        """The first warmed-up waiting stream, if a row is free: its last prompt segment, then its first token."""
        request = next((r for r in self.waiting if r.warm), None)
        if request is None or len(self.rows) >= self.max_batch:
            return
        with self.lock:
            self.waiting.remove(request)
        request.warmup_s = time.perf_counter() - request.started
        seg_len, current = self.checkpoint.max_seq_len, request.current
        request.tell(SegmentStarted(current, current * seg_len, "prompt"))
        state = request.state or self._cached_prompt(request)  # a prompt of one segment has no warm-up to find it
        if state is not None:
            self.decoder.restore(state[0])
            logits = state[1]
        else:
            logits = self.decoder.add(request.prompt[:, current * seg_len:], request.mems, request.mem_len)  # (1, v)
            self.prompts[request.whole] = (self.decoder.saved(self.decoder.rows - 1), logits)
            while len(self.prompts) > self.prompt_cache_size:
                self.prompts.popitem(last=False)
        request.mems = request.state = None  # the decoder holds them now; the caches may hold them too
        self.rows.append(request)
        self._take(logits, range(len(self.rows) - 1, len(self.rows)))

    def _take(self, logits: torch.Tensor, rows: range) -> None:
        """Samples the next token of each of rows from its logits (len(rows), v), each stream drawing from its own
        generator as it would alone: one pass per sampling setting and one draw for all (choose_tokens_apart), which
        spares the decoding thread most of a pass per stream."""
        requests = [self.rows[row] for row in rows]
        chosen = choose_tokens_apart(logits, torch.cat([r.seen for r in requests]), [r.settings for r in requests],
                                     [r.generator for r in requests])
        logprobs = logits.float().log_softmax(dim=-1).gather(-1, chosen[:, None]).squeeze(-1).tolist()
        for i in reversed(range(len(rows))):  # from the end: a finished row takes the last one's place
            self._tell(rows[i], int(chosen[i]), logprobs[i], logits[i])

    def _tell(self, row: int, token: int, logprob: float, logits: torch.Tensor) -> None:
        """Tells row's stream of its token, chosen from logits (v,), as the engine's loop does; a finished stream
        leaves the batch."""
        request, seg_len, sample = self.rows[row], self.checkpoint.max_seq_len, self.rows[row].sample
        request.seen[0, token] = True
        position = request.position
        if position % seg_len == 0:
            request.tell(SegmentStarted(position // seg_len, position, "generated"))
        piece = sample.add(token)
        request.tell(Token(token, piece, logprob, position, position // seg_len, 0,
                           logits.clone() if request.keep_logits else None))
        request.last_token_at = time.perf_counter()
        request.first_token_at = request.first_token_at or request.last_token_at
        if sample.reason is None:
            request.chosen, request.position = token, position + 1
            return
        request.tell(Finished((sample.reason,), (tuple(sample.ids),), (sample.text,), request.warmup_s,
                              request.first_token_at - request.started,
                              decode_rate(len(sample.ids), request.first_token_at, request.last_token_at),
                              position // seg_len + 1, self.decoder.memory_tokens(row)))
        request.send(request.last_token_at, force=True)
        with self.lock:
            self._release(row)

    def _release(self, row: int) -> None:
        self.decoder.remove(row)
        request = self.rows[row]
        self.rows[row] = self.rows[-1]
        self.rows.pop()
        request.released.set()

    def _fail_all(self, error: Exception) -> None:
        with self.lock:
            for request in self.rows + self.waiting:
                request.events.put(error)
                request.released.set()
            self.rows, self.waiting, self.warming = [], [], {}
            # whatever state the fault left is not reused
            self.decoder = BatchedDecoder(self.checkpoint.model, capacity=self.max_batch)
