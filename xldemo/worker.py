"""A checkpoint's shared batches in processes of their own. In the server's process the decoding thread shares one
interpreter with gradio's threads and the visitors' readers: each torch call gives up the interpreter and must wait to
take it back, which made a step there half as fast again as alone. Here each child decodes a batch of its own
(serving.Scheduler, as in process) and the server's process only reads the events they send back. A step is one
core's work (two threads on two cores made it slower), so a server with two cores runs two children, each with half
the visitors (DecodePool).

The server and each child talk over a socket pair in length-prefixed pickles. To the child: the checkpoint once, then
("start", id, prompt, settings, keep_logits), ("cancel", id), ("live", id) and ("prefix", None, key, memory). Back:
("ready", None) once the checkpoint is built, ("events", id, a list of events or the exception that ends the stream),
("released", id) once the stream has left the batch, ("live", id, (rows, waiting)) and ("warmed", None, key, memory)
after each prompt it warms up, which the server hands to the other children as a "prefix" to cache. The child ends
when the server's end closes; the server's streams fail with a clear error if the child ends first. A child that ends
before it is ready could not start (a broken install, too little memory): the server says so in its log and decodes
that checkpoint's batch in its own process from then on.

python -m xldemo.worker FD THREADS is the child; nothing else runs it."""

import io
import itertools
import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
import traceback
from collections import OrderedDict
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from .batched import BatchedDecoder
from .checkpoint import Checkpoint, build_model
from .engine import GenerationSettings, Started, resolve
from .errors import XLDemoError, one_line
from .serving import CANCEL_WAIT_S, PREFIX_CACHE_SIZE, Scheduler, _Request, process_threads, prompt_keys, read_events

LIVE_WAIT_S = 10  # how long live() waits for the child's answer
CHILD = [sys.executable, "-m", "xldemo.worker"]  # then the socket's descriptor and the torch threads
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # where `-m xldemo.worker` imports from, wherever the app runs


class DecodePool:
    """Scheduler's generate and live for checkpoint, over `processes` DecodeWorkers, each with a batch of its own. A
    stream goes to a worker with the fewest streams: among those, one that was lately sent or handed its prompt (it
    may still be warming it up, which a stream sent after it then shares), else the one chosen least lately. A
    prompt one child warms up is handed to the others, so that no visitor waits for a warm-up another child has run.
    Without a server, 8 streams of the shipped model decode 1,227 tokens/s in two processes against 883 in one
    (`python -m xldemo bench --streams 8 --stream-processes 0,2`, 2026-11-30; README has the rest)."""

    def __init__(self, checkpoint: Checkpoint, processes: int):
        self.checkpoint = checkpoint
        self.streams = [0] * processes  # per worker: streams sent to it and not yet closed
        self.chosen = [0] * processes  # per worker: when it last took a stream, as a count of choices
        self.prompts = [OrderedDict() for _ in range(processes)]  # per worker: prompt keys sent or handed to it lately
        self.lock, self.choices = threading.Lock(), itertools.count(1)
        threads = process_threads(processes)
        self.workers = [DecodeWorker(checkpoint, threads) for _ in range(processes)]
        for worker in self.workers:
            worker.on_warm_up = self._relay

    @property
    def failed_to_start(self) -> bool:
        """A child ended before it had built the checkpoint: a new one would fail alike (see serving.scheduler_for)."""
        return any(worker.ended is not None and not worker.ready for worker in self.workers)

    @property
    def ended(self) -> XLDemoError | None:
        """Why a child ended, if one has: the pool is then replaced (see serving.scheduler_for)."""
        return next((worker.ended for worker in self.workers if worker.ended is not None), None)

    def generate(self, prompt_ids, settings: GenerationSettings, keep_logits: bool = False):
        """engine.generate for one stream of this pool's checkpoint (settings the batch supports)."""
        prompt, settings = resolve(self.checkpoint, prompt_ids, settings)
        return self._stream(prompt, settings, keep_logits)

    def _stream(self, prompt: torch.Tensor, settings: GenerationSettings, keep_logits: bool):
        # the worker is chosen when the stream starts, not when generate() is called: a stream never started takes
        # nothing, and its count is given back however it ends
        seg_len = self.checkpoint.max_seq_len
        # a prompt within its first segment has no warm-up to cache: any worker serves it as well
        key = prompt_keys(prompt, seg_len, settings.mem_len)[0] if prompt.shape[-1] > seg_len else None
        index = self._choose(key)
        try:
            yield from self.workers[index]._stream(prompt, settings, keep_logits)
        finally:
            with self.lock:
                self.streams[index] -= 1

    def _choose(self, key: tuple | None) -> int:
        with self.lock:
            fewest = min(self.streams)
            index = min((i for i, n in enumerate(self.streams) if n == fewest),
                        key=lambda i: (key not in self.prompts[i], self.chosen[i]))
            self.streams[index] += 1
            self.chosen[index] = next(self.choices)
            self._took(index, key)
            return index

    def _took(self, index: int, key: tuple | None) -> None:
        """Records that the child at index holds key's warm-up now (the caller holds the lock)."""
        if key is not None:
            prompts = self.prompts[index]
            prompts[key] = None
            prompts.move_to_end(key)
            while len(prompts) > PREFIX_CACHE_SIZE:  # as many as the child's cache keeps
                prompts.popitem(last=False)

    def _relay(self, source: "DecodeWorker", key: tuple, memory) -> None:
        """A prompt one child warmed up, to every other child's cache: a visitor with that prompt is then not warmed
        up again wherever they land (the examples: 12 segments, 0.75 s of a core each)."""
        for index, worker in enumerate(self.workers):
            if worker is not source:
                worker.send("prefix", None, key, memory)
                with self.lock:
                    self._took(index, key)

    def live(self) -> tuple[int, int]:
        """(streams in the children's batches, streams waiting or warming up there)."""
        rows, waiting = zip(*(worker.live() for worker in self.workers))
        return sum(rows), sum(waiting)

    def retire(self) -> None:
        """Ends the children once their streams are done."""
        for worker in self.workers:
            worker.retire()


class DecodeWorker:
    """Scheduler's generate and live for checkpoint, the scheduler running in a child process with `threads` torch
    threads."""

    def __init__(self, checkpoint: Checkpoint, threads: int = 1):
        self.checkpoint = checkpoint
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen([*CHILD, str(theirs.fileno()), str(threads)], pass_fds=(theirs.fileno(),),
                                            cwd=PACKAGE_ROOT)
        # the socket stays for shutdown(), which wakes the reader and ends the child; the connection frames messages
        self.socket, self.connection = ours, Connection(os.dup(ours.fileno()))
        self.streams: dict[int, _Stream] = {}
        self.ids, self.send, self.retiring, self.ended = itertools.count(), _Sender(self.connection), False, None
        self.ready = False  # the child has built the checkpoint; it ending before then is a failure to start
        self.on_warm_up = None  # on_warm_up(self, key, memory): told of each prompt the child warms up
        self.send.lock.acquire()  # held until the checkpoint has gone, the child's first message: see _start
        threading.Thread(target=self._start, name="xldemo-worker-reader", daemon=True).start()

    def generate(self, prompt_ids, settings: GenerationSettings, keep_logits: bool = False):
        """engine.generate for one stream of this worker's checkpoint (settings the batch supports)."""
        prompt, settings = resolve(self.checkpoint, prompt_ids, settings)
        return self._stream(prompt, settings, keep_logits)

    def live(self) -> tuple[int, int]:
        """(streams in the child's batch, streams waiting or warming up there)."""
        answer = self._open()
        self.send("live", answer.id)
        try:
            told = answer.events.get(timeout=LIVE_WAIT_S)
        finally:
            self.streams.pop(answer.id, None)
        if isinstance(told, Exception):  # the child has ended
            raise told
        return told

    def retire(self) -> None:
        """Ends the child once its streams are done."""
        self.retiring = True
        if not self.streams:
            self._close()

    def _stream(self, prompt: torch.Tensor, settings: GenerationSettings, keep_logits: bool):
        stream, sent = self._open(), False
        try:
            yield Started(BatchedDecoder.name, prompt.shape[-1], self.checkpoint.max_seq_len, settings.mem_len,
                          settings.seed)
            self.send("start", stream.id, prompt, settings, keep_logits)  # after the yield, as the engine's clock
            sent = True
            yield from read_events(stream.events)
        finally:  # closed early or not: the child frees the row, if it still holds one, before this returns
            if sent and self.ended is None:
                self.send("cancel", stream.id)
                stream.released.wait(CANCEL_WAIT_S)
            self.streams.pop(stream.id, None)
            if self.retiring and not self.streams:
                self._close()

    def _close(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:  # already shut
            pass

    def _open(self) -> "_Stream":
        stream = _Stream(next(self.ids))
        self.streams[stream.id] = stream
        if self.ended is not None:
            stream.events.put(self.ended)
        return stream

    def _start(self) -> None:
        """Sends the checkpoint, which takes until the child has imported torch (seconds), then reads. Streams
        opened meanwhile wait for the sending lock: whoever makes a worker does not wait."""
        weights = io.BytesIO()
        torch.save(self.checkpoint.model.state_dict(), weights)
        checkpoint = (self.checkpoint.config, weights.getvalue(), self.checkpoint.tokenizer, self.checkpoint.source)
        try:
            self.send.deliver(pickle.dumps(checkpoint))
        finally:
            self.send.lock.release()
        self._read()

    def _read(self) -> None:
        try:
            while True:
                kind, key, *rest = pickle.loads(self.connection.recv_bytes())
                if kind == "ready":
                    self.ready = True
                    continue
                if kind == "warmed":
                    if self.on_warm_up is not None:
                        self.on_warm_up(self, *rest)
                    continue
                stream = self.streams.get(key)
                if stream is None:  # a stream closed while the child was still sending
                    continue
                if kind == "released":
                    stream.released.set()
                else:
                    stream.events.put(rest[0])
        except (EOFError, OSError):  # the child has ended, or retire() shut the socket
            pass
        except Exception:  # a message that will not unpickle: the stream it was for would wait for ever
            traceback.print_exc()
            self.process.kill()
        if self.retiring:
            self.ended = XLDemoError("This checkpoint's decoding process was closed; try again.")
        elif not self.ready:  # scheduler_for decodes this checkpoint in the server's process from now on
            print(f"xldemo: the decoding process for {self.checkpoint.source} could not start (exit code "
                  f"{self._exit_code()}); its batch runs in the server's process instead", file=sys.stderr)
            self.ended = XLDemoError("The decoding process could not start; this checkpoint now decodes in the "
                                     "server's process: try again.")
        else:
            self.ended = XLDemoError("The decoding process ended; try again.")
        for stream in list(self.streams.values()):
            stream.events.put(self.ended)
            stream.released.set()
        self.connection.close()
        self.socket.close()
        self.process.wait()

    def _exit_code(self) -> int | None:
        try:
            return self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # its end of the socket closed, yet it runs: a code of None says so
            return None


class _Stream:
    def __init__(self, id: int):
        self.id, self.events, self.released = id, queue.SimpleQueue(), threading.Event()


class _Sender:
    """Messages (kind, id, ...) to the other end, from any thread of either process: each pickled, then sent whole."""

    def __init__(self, connection: Connection):
        self.connection, self.lock = connection, threading.Lock()

    def __call__(self, *message) -> None:
        try:
            data = pickle.dumps(message)
        except Exception as e:  # an exception that will not pickle still ends its stream, told in words
            data = pickle.dumps((*message[:2], XLDemoError(one_line(e))))
        with self.lock:
            self.deliver(data)

    def deliver(self, data: bytes) -> None:
        """data as it is; the caller holds the lock."""
        try:
            self.connection.send_bytes(data)
        except (OSError, ValueError):  # the other end has closed: its reader, or nobody, finds out
            pass


class _Events:
    def __init__(self, send: _Sender, id: int):
        self.send, self.id = send, id

    def put(self, told) -> None:
        self.send("events", self.id, told)


class _Released:
    def __init__(self, send: _Sender, id: int, requests: dict):
        self.send, self.id, self.requests = send, id, requests

    def set(self) -> None:
        self.requests.pop(self.id, None)
        self.send("released", self.id)


def serve(connection: Connection, threads: int = 1) -> None:
    """The child: builds the checkpoint the server sends, then starts, cancels and reports streams until the server's
    end closes; its batch steps on `threads` torch threads."""
    config, weights, tokenizer, source = pickle.loads(connection.recv_bytes())
    model = build_model(config)
    model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    checkpoint = Checkpoint(model.eval(), config, tokenizer, source)
    send, requests = _Sender(connection), {}
    scheduler = Scheduler(checkpoint, threads=threads, on_warm_up=lambda key, memory: send("warmed", None, key, memory))
    send("ready", None)
    while True:
        try:
            kind, key, *rest = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        if kind == "start":
            prompt, settings, keep_logits = rest
            requests[key] = _Request(prompt, settings, keep_logits, checkpoint, _Events(send, key),
                                     _Released(send, key, requests))
            scheduler.submit(requests[key])
        elif kind == "cancel" and key in requests:
            requests[key].cancelled = True
        elif kind == "live":
            send("live", key, scheduler.live())
        elif kind == "prefix":
            scheduler.offer_prefix(*rest)


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
    # no interpreter shutdown: the decoding thread may be inside torch, and a daemon thread stopped there aborts
    os._exit(0)
