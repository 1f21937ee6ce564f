"""The shared batches in processes of their own: streams decoded in a child give the events of their solo engine runs
(the teacher-forced logits included), several at once; closing a stream frees its row there; a pool of children
spreads streams over them and hands each the prompts the others warmed up; a child that dies fails its streams with a
clear error and the next request gets a new pool, unless it could not start at all; a dropped worker's child ends."""

import os
import signal
import sys
import threading
import time
from dataclasses import replace

import pytest
import torch

from conftest import tiny_checkpoint, tiny_config
from test_serving import STREAMS, assert_teacher_forced, prompt_of, same_events, settings_of, solo
from xldemo import serving
from xldemo import worker as worker_module
from xldemo.engine import GenerationSettings, Token, generate
from xldemo.serving import prompt_keys
from xldemo.errors import XLDemoError
from xldemo.worker import DecodePool, DecodeWorker


@pytest.fixture(scope="module")
def worker():
    checkpoint = tiny_checkpoint(tiny_config(seq_len=8, mem_len=13))
    worker = DecodeWorker(checkpoint)
    yield worker
    worker.retire()


def assert_streams_at_once_run_as_alone(source) -> None:
    """Every one of STREAMS through source (a worker or a pool), from threads of their own at once: each gives the
    events of its solo engine run and its teacher-forced logits."""
    checkpoint, results = source.checkpoint, {}

    def visitor(i):
        results[i] = list(source.generate(prompt_of(i), settings_of(i), keep_logits=True))

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(len(STREAMS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(len(STREAMS)):
        assert same_events(results[i], solo(checkpoint, i)), i
        assert_teacher_forced(checkpoint.model, prompt_of(i), settings_of(i), results[i])


def test_streams_at_once_in_the_child_give_their_solo_events_and_teacher_forced_logits(worker):
    assert_streams_at_once_run_as_alone(worker)
    assert worker.live() == (0, 0)


def test_closing_a_stream_frees_its_row_in_the_child_at_once(worker):
    stopped = worker.generate([1, 2, 3], GenerationSettings(max_new_tokens=4000, seed=1))
    kept_settings = replace(settings_of(4), max_new_tokens=2000)
    kept = worker.generate(prompt_of(4), kept_settings)
    next(e for e in stopped if isinstance(e, Token))
    read = [next(kept) for _ in range(8)]
    assert worker.live() == (2, 0)
    stopped.close()
    assert worker.live() == (1, 0)  # when close returns, the child has freed the row
    assert same_events(read + list(kept), list(generate(worker.checkpoint, prompt_of(4), kept_settings)))
    assert worker.live() == (0, 0)
    never_started = worker.generate([5], GenerationSettings(max_new_tokens=5))
    next(never_started)  # Started, and closed before the child heard of the stream: nothing to wait for
    began = time.monotonic()
    never_started.close()
    assert time.monotonic() - began < 1 and worker.live() == (0, 0)


def test_a_pool_spreads_streams_over_its_children_and_hands_each_the_others_warm_ups(worker):
    pool = DecodePool(worker.checkpoint, 2)
    try:
        long = GenerationSettings(max_new_tokens=4000, seed=1)

        def started(prompt):
            stream = pool.generate(prompt, long)
            next(e for e in stream if isinstance(e, Token))
            return stream

        def rows():
            return [w.live()[0] for w in pool.workers]

        a, b = list(range(1, 12)), list(range(20, 29))  # each with a complete segment (8) to warm up
        first, second = started(a), started(b)
        assert rows() == [1, 1]  # one to each child
        key_a, key_b = (prompt_keys(torch.tensor([p]), 8, 13)[0] for p in (a, b))
        deadline = time.monotonic() + 10
        while not (key_a in pool.prompts[1] and key_b in pool.prompts[0]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert key_a in pool.prompts[1] and key_b in pool.prompts[0]  # each child's warm-up handed to the other
        again = started(a)
        assert rows() == [2, 1]  # of two as busy, the one chosen least lately
        third, fourth = started([6]), started(b)
        assert rows() == [3, 2]  # [6] to the less busy, then b to the one chosen least lately
        more = [started(a), started(a)]
        assert rows() == [4, 3]  # the less busy first, never two apart
        settings = GenerationSettings(max_new_tokens=30, seed=8)  # to the second child, with the first's warm-up of a
        assert same_events(list(pool.generate(a, settings)), list(generate(pool.checkpoint, a, settings)))
        for stream in (first, second, again, third, fourth, *more):
            stream.close()
        assert rows() == [0, 0] and pool.streams == [0, 0]
        assert_streams_at_once_run_as_alone(pool)  # on whichever child each lands
    finally:
        pool.retire()


COUNTING_CHILD = """
import os, sys
from multiprocessing.connection import Connection
from xldemo import serving, worker
real = serving.warm_up_memory
def counted(*args):
    for memory in real(*args):
        with open({log!r}, "a") as log:
            log.write(f"{{os.getpid()}}\\n")
        yield memory
serving.warm_up_memory = counted
worker.serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
os._exit(0)
"""


def test_a_prompt_one_child_warmed_up_is_not_warmed_up_again_in_another(worker, monkeypatch, tmp_path):
    log = tmp_path / "warm-ups"
    monkeypatch.setattr(worker_module, "CHILD", [sys.executable, "-c", COUNTING_CHILD.format(log=str(log))])
    pool = DecodePool(worker.checkpoint, 2)
    try:
        prompt = list(range(1, 20))  # two complete segments of 8
        busy = pool.generate(prompt, GenerationSettings(max_new_tokens=4000, seed=1))
        next(e for e in busy if isinstance(e, Token))
        assert log.read_text().split() == [str(pool.workers[0].process.pid)] * 2  # the first child's two segments
        settings = GenerationSettings(max_new_tokens=30, seed=8)
        deadline = time.monotonic() + 10
        while len(pool.prompts[1]) == 0 and time.monotonic() < deadline:  # the warm-up on its way to the second
            time.sleep(0.01)
        events = list(pool.generate(prompt, settings))  # to the second child, the less busy
        assert [w.live()[0] for w in pool.workers] == [1, 0] and pool.chosen[1] > pool.chosen[0]
        assert same_events(events, list(generate(pool.checkpoint, prompt, settings)))
        assert len(log.read_text().split()) == 2  # no segment warmed up again
        busy.close()
    finally:
        pool.retire()


def test_a_child_that_dies_fails_its_streams_and_the_next_request_gets_a_new_one():
    checkpoint = tiny_checkpoint()
    first = serving.scheduler_for(checkpoint, 2)
    assert isinstance(first, DecodePool) and len(first.workers) == 2
    dying, other = first.workers
    stream = serving.generate(checkpoint, [1, 2, 3], GenerationSettings(max_new_tokens=4000), processes=2)
    next(e for e in stream if isinstance(e, Token))
    assert dying.live() == (1, 0)  # the first stream went to the first child
    kept = serving.generate(checkpoint, [5, 6], GenerationSettings(max_new_tokens=40, seed=2), processes=2)
    next(kept)
    other.ready = False  # as if its sibling were still starting: this death is no failure to start all the same
    os.kill(dying.process.pid, signal.SIGKILL)
    with pytest.raises(XLDemoError, match="decoding process ended"):
        for _ in stream:
            pass
    with pytest.raises(XLDemoError, match="decoding process ended"):
        first.live()
    second = serving.scheduler_for(checkpoint, 2)
    assert second is not first and isinstance(second, DecodePool)
    assert list(serving.generate(checkpoint, [4], GenerationSettings(max_new_tokens=3), processes=2))[-1].reason \
        == "length"
    assert list(kept)[-1].reason == "length"  # the other child of the dead one's pool finishes its stream, then ends
    assert other.process.wait(timeout=30) == 0
    second.retire()


def test_a_retired_worker_finishes_its_stream_then_its_child_ends():
    worker = DecodeWorker(tiny_checkpoint())
    stream = worker.generate([1, 2], GenerationSettings(max_new_tokens=50, seed=3))
    next(stream)
    worker.retire()
    assert worker.process.poll() is None  # still serving its stream
    assert list(stream)[-1].reason == "length"
    deadline = time.monotonic() + 30
    while worker.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.process.poll() == 0


def test_opening_the_page_starts_the_checkpoints_decoding_process(app_folder):
    from xldemo.web.handlers import Handlers

    handlers = Handlers(str(app_folder), processes=2)
    model = handlers.load(None).model
    for key in [k for k in serving._schedulers if k[0] == id(model)]:
        serving._schedulers.pop(key).retire()
    began = time.monotonic()
    handlers.info(None)  # what the page's load event runs
    assert time.monotonic() - began < 1  # the page does not wait for the child to start
    pool = serving._schedulers[(id(model), 2)]
    assert isinstance(pool, DecodePool) and [worker.live() for worker in pool.workers] == [(0, 0)] * 2  # both answer


def test_a_child_that_cannot_start_leaves_the_batch_in_the_servers_process(monkeypatch, capfd):
    checkpoint = tiny_checkpoint()
    monkeypatch.setattr(worker_module, "CHILD", [sys.executable, "-c", "raise SystemExit(3)"])
    failed = serving.scheduler_for(checkpoint, 1)
    assert isinstance(failed, DecodePool)
    with pytest.raises(XLDemoError, match="could not start; this checkpoint now decodes in the server's process"):
        list(failed.generate([1, 2, 3], GenerationSettings(max_new_tokens=5)))
    assert "could not start (exit code 3)" in capfd.readouterr().err
    fallback = serving.scheduler_for(checkpoint, 1)  # no new child: it would fail again
    assert isinstance(fallback, serving.Scheduler)
    settings = GenerationSettings(max_new_tokens=12, seed=5)
    assert same_events(list(serving.generate(checkpoint, [1, 2, 3], settings, processes=1)),
                       list(generate(checkpoint, [1, 2, 3], settings)))
