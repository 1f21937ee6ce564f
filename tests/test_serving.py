"""The scheduler: concurrent streams, each with its own prompt, memory length, settings and seed, give the events and
tokens of their solo engine runs and the logits of their teacher-forced passes; closing a stream frees its row."""

import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
import torch

from conftest import tiny_checkpoint, tiny_config
from test_batched import reference_logits
from test_fast import SUPPORTED, random_tokens
from xldemo import serving
from xldemo.batched import BatchedDecoder
from xldemo.engine import Finished, GenerationSettings, Token, WarmupProgress, generate
from xldemo.serving import Scheduler
from xldemo.web.local import ROOT

# one per stream: prompt length and settings; memory lengths below, at and above the model's, and none
STREAMS = [(1, dict(max_new_tokens=30, temperature=0.0)),
           (7, dict(max_new_tokens=19, temperature=0.9, top_k=20, mem_len=3, seed=1)),
           (8, dict(max_new_tokens=25, temperature=1.0, top_p=0.8, mem_len=0, seed=2)),
           (9, dict(max_new_tokens=12, temperature=0.7, min_p=0.05, repetition_penalty=1.3, seed=3)),
           (21, dict(max_new_tokens=40, temperature=1.2, mem_len=13, seed=4)),
           (35, dict(max_new_tokens=17, temperature=1.0, stop=("a",), seed=5)),
           (50, dict(max_new_tokens=33, temperature=0.8, eos_id=7, top_k=3, seed=6))]


def settings_of(i: int) -> GenerationSettings:
    return GenerationSettings(**{"seed": 0, **STREAMS[i][1]})


def prompt_of(i: int) -> list[int]:
    return random_tokens(1, STREAMS[i][0], seed=100 + i)[0].tolist()


def run_together(scheduler: Scheduler, order: list[int], keep_logits: bool = False) -> dict[int, list]:
    """Opens the streams one after another from one thread, each after the ones before have sent a few events,
    then reads them all in turns: so they join and leave the batch at different steps."""
    streams, events = {}, {}
    for i in order:
        streams[i] = scheduler.generate(prompt_of(i), settings_of(i), keep_logits)
        events[i] = [next(streams[i])]
        for j in streams:
            for _ in range(3):
                if not isinstance(events[j][-1], Finished):
                    events[j].append(next(streams[j]))
    for i, stream in streams.items():
        events[i] += list(stream)
    return events


def solo(checkpoint, i: int, keep_logits: bool = False) -> list:
    return list(generate(checkpoint, prompt_of(i), settings_of(i), keep_logits))


def same_events(a: list, b: list) -> bool:
    """Equal but for the decoder's name, the timings, and log-probabilities within float error (a batch's sums
    run in another order than one stream's)."""
    def plain(events):
        return [(type(e).__name__, e.id, e.text, e.position, e.segment) if isinstance(e, Token) else e
                for e in events[1:-1]]

    logprobs = [[e.logprob for e in events if isinstance(e, Token)] for events in (a, b)]
    ends = [(e.reasons, e.token_ids, e.texts, e.segments, e.memory_tokens) for e in (a[-1], b[-1])]
    starts = [(e.prompt_tokens, e.segment_len, e.mem_len, e.seed) for e in (a[0], b[0])]
    return (plain(a) == plain(b) and ends[0] == ends[1] and starts[0] == starts[1]
            and logprobs[0] == pytest.approx(logprobs[1], abs=1e-4))


def assert_teacher_forced(net, prompt: list[int], settings: GenerationSettings, events: list) -> None:
    """The logits kept with each token (keep_logits) are those of the segmented teacher-forced pass that chose it."""
    tokens = [e for e in events if isinstance(e, Token)]
    text = torch.tensor(prompt + [t.id for t in tokens])[None]  # (1, n)
    mem_len = net.max_mem_len if settings.mem_len is None else settings.mem_len
    reference = reference_logits(net, text, mem_len)[0, len(prompt) - 1:-1]  # those that chose the tokens
    torch.testing.assert_close(torch.stack([t.logits for t in tokens]), reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", SUPPORTED)
def test_concurrent_streams_give_their_solo_tokens_and_teacher_forced_logits(name):
    checkpoint = tiny_checkpoint(SUPPORTED[name])
    net, scheduler = checkpoint.model, Scheduler(checkpoint)
    together = run_together(scheduler, [4, 0, 6, 2, 5, 1, 3], keep_logits=True)
    for i, events in together.items():
        assert events[0].decoder == "batched"
        alone = solo(checkpoint, i)
        assert same_events(events, alone), f"stream {i}"
        assert_teacher_forced(net, prompt_of(i), settings_of(i), events)
    assert scheduler.live() == (0, 0)


def test_the_comparison_can_fail(monkeypatch):
    """Guard: a batch that loses a stream's memory at its boundaries no longer matches its solo run."""
    checkpoint = tiny_checkpoint()
    monkeypatch.setattr(BatchedDecoder, "_next_segment", lambda self, row: (self.memory.__setitem__(row, 0),
                                                                          self.offsets.__setitem__(row, 0)))
    events = run_together(Scheduler(checkpoint), [4])[4]
    assert not same_events(events, solo(checkpoint, 4))


def test_streams_from_many_threads_give_their_solo_tokens():
    checkpoint = tiny_checkpoint(tiny_config(mem_len=5))
    scheduler, results = Scheduler(checkpoint, max_batch=3), {}  # more streams than rows: some wait for a row

    def visitor(i):
        results[i] = list(scheduler.generate(prompt_of(i), settings_of(i)))

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(len(STREAMS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(same_events(results[i], solo(checkpoint, i)) for i in range(len(STREAMS)))


def test_closing_a_stream_frees_its_row_at_once_and_the_others_carry_on():
    checkpoint = tiny_checkpoint()
    scheduler = Scheduler(checkpoint)
    stopped = scheduler.generate([1, 2, 3], GenerationSettings(max_new_tokens=4000, seed=1))
    kept_settings = replace(settings_of(4), max_new_tokens=2000)  # long enough to be still running when checked
    kept, read = scheduler.generate(prompt_of(4), kept_settings), []
    next(e for e in stopped if isinstance(e, Token))
    while not isinstance(event := next(kept), Token) or len(read) < 5:
        read.append(event)
    read.append(event)
    assert scheduler.live() == (2, 0)
    stopped.close()
    assert scheduler.live() == (1, 0) and scheduler.decoder.rows == 1  # when close returns, the row is free
    assert same_events(read + list(kept), list(generate(checkpoint, prompt_of(4), kept_settings)))
    assert scheduler.live() == (0, 0)
    assert list(scheduler.generate([4], GenerationSettings(max_new_tokens=3)))[-1].reason == "length"


def test_a_long_warm_up_is_interleaved_with_the_others_steps(monkeypatch):
    checkpoint = tiny_checkpoint()
    scheduler, log = Scheduler(checkpoint), []
    step, warm_up = scheduler.decoder.step, scheduler._warm_up_one
    monkeypatch.setattr(scheduler.decoder, "step", lambda ids: log.append("step") or step(ids))
    monkeypatch.setattr(scheduler, "_warm_up_one", lambda: log.append("warm") or warm_up())
    decoding = scheduler.generate([1, 2, 3], GenerationSettings(max_new_tokens=4000, seed=1))
    next(e for e in decoding if isinstance(e, Token))
    long = scheduler.generate(random_tokens(1, 20 * 8 + 1, seed=1)[0].tolist(), GenerationSettings(max_new_tokens=2))
    progress = [e for e in long if isinstance(e, WarmupProgress)]
    assert [p.done for p in progress] == list(range(1, 21))
    # between any two warm-up segments of the long prompt, the decoding stream took a step
    assert "warm,warm" not in ",".join(log[log.index("warm"):])
    decoding.close()


@pytest.fixture
def segments(monkeypatch) -> list:
    """One entry for each prompt segment any scheduler warms up from now on."""
    warmed, warm_up = [], serving.warm_up_memory

    def counted(*args):
        for mems in warm_up(*args):
            warmed.append(1)
            yield mems

    monkeypatch.setattr(serving, "warm_up_memory", counted)
    return warmed


def test_visitors_with_the_same_prompt_share_its_warm_up(segments):
    checkpoint = tiny_checkpoint()
    scheduler = Scheduler(checkpoint)
    prompt, settings = random_tokens(1, 5 * 8 + 2, seed=2)[0].tolist(), GenerationSettings(max_new_tokens=9, seed=3)
    streams = [scheduler.generate(prompt, settings) for _ in range(3)]
    firsts = [next(s) for s in streams]
    results = [firsts[i:i + 1] + list(s) for i, s in enumerate(streams)]
    assert len(segments) == 5  # one warm-up of five segments, for three visitors
    alone = list(generate(checkpoint, prompt, settings))
    assert all(same_events(r, alone) for r in results)
    list(scheduler.generate(prompt, GenerationSettings(max_new_tokens=2, mem_len=3)))
    assert len(segments) == 10  # another memory length is another warm-up


def test_a_warm_up_one_scheduler_ran_is_taken_by_another_and_not_run_again(segments):
    checkpoint = tiny_checkpoint()
    taker = Scheduler(checkpoint)
    runner = Scheduler(checkpoint, on_warm_up=taker.offer_prefix)  # as a DecodePool wires its children
    prompt, settings = random_tokens(1, 4 * 8 + 3, seed=5)[0].tolist(), GenerationSettings(max_new_tokens=9, seed=4)
    alone = list(generate(checkpoint, prompt, settings))
    assert same_events(list(runner.generate(prompt, settings)), alone) and len(segments) == 4
    assert same_events(list(taker.generate(prompt, settings)), alone) and len(segments) == 4  # no second warm-up
    list(taker.generate(prompt, replace(settings, mem_len=3)))
    assert len(segments) == 8  # another memory length is another warm-up


def test_a_prompt_seen_lately_opens_its_row_as_a_copy_and_writes_what_it_writes_alone():
    checkpoint = tiny_checkpoint()
    scheduler, prefills = Scheduler(checkpoint, prompt_cache_size=2), []
    prefill = scheduler.decoder._prefill

    def counted(*args):
        prefills.append(1)
        return prefill(*args)

    scheduler.decoder._prefill = counted
    long, short = random_tokens(1, 5 * 8 + 2, seed=2)[0].tolist(), [7, 8, 9]
    net = checkpoint.model
    for prompt, settings, expected in ((long, GenerationSettings(max_new_tokens=9, seed=3), 1),
                                       (long, GenerationSettings(max_new_tokens=20, seed=4, temperature=0.5), 1),
                                       (short, GenerationSettings(max_new_tokens=12, seed=5), 2),
                                       (short, GenerationSettings(max_new_tokens=12, seed=6), 2),
                                       (long, GenerationSettings(max_new_tokens=5, mem_len=3, seed=8), 3),
                                       (long, GenerationSettings(max_new_tokens=5, seed=7), 4)):  # dropped for two newer
        events = list(scheduler.generate(prompt, settings, keep_logits=True))
        assert len(prefills) == expected
        assert same_events(events, list(generate(checkpoint, prompt, settings)))
        assert_teacher_forced(net, prompt, settings, events)
    together = [scheduler.generate(long, GenerationSettings(max_new_tokens=30, seed=i)) for i in range(3)]
    firsts = [next(s) for s in together]
    results = [firsts[i:i + 1] + list(s) for i, s in enumerate(together)]
    assert len(prefills) == 4  # still in the cache: three rows copied while the others decode
    assert all(same_events(r, list(generate(checkpoint, long, GenerationSettings(max_new_tokens=30, seed=i))))
               for i, r in enumerate(results))


def test_runs_the_batch_cannot_take_go_through_the_engine():
    checkpoint, generic = tiny_checkpoint(), tiny_checkpoint(tiny_config(rel_pos_bias=True))
    assert next(serving.generate(checkpoint, [1, 2], GenerationSettings(max_new_tokens=2))).decoder == "batched"
    for model, settings in ((checkpoint, GenerationSettings(num_samples=2)),
                            (checkpoint, GenerationSettings(details=True)),
                            (checkpoint, GenerationSettings(decoder="generic")), (generic, GenerationSettings())):
        assert next(serving.generate(model, [1, 2], settings)).decoder != "batched"


def test_a_fault_reaches_every_stream_instead_of_hanging(monkeypatch):
    checkpoint = tiny_checkpoint()
    scheduler = Scheduler(checkpoint)
    monkeypatch.setattr(scheduler.decoder, "step", lambda ids: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        list(scheduler.generate([1, 2, 3], GenerationSettings(max_new_tokens=5)))
    assert scheduler.live() == (0, 0)
    assert list(scheduler.generate([1], GenerationSettings(max_new_tokens=3)))[-1].reason == "length"  # a new decoder


def test_streams_with_one_sampling_setting_draw_together_each_as_alone(monkeypatch):
    checkpoint, groups = tiny_checkpoint(), []
    draw = serving.choose_tokens_apart
    monkeypatch.setattr(serving, "choose_tokens_apart", lambda *a: groups.append(len(a[3])) or draw(*a))
    settings = [GenerationSettings(max_new_tokens=200 + i, temperature=1.0, top_p=0.9, repetition_penalty=1.2, seed=i)
                for i in range(4)]
    prompts = [prompt_of(i) for i in (0, 2, 3, 4)]
    scheduler = Scheduler(checkpoint)
    streams = [scheduler.generate(p, s) for p, s in zip(prompts, settings)]
    heads = [[next(s), next(s)] for s in streams]  # the second event waits for the stream to be under way
    results = [head + list(stream) for head, stream in zip(heads, streams)]
    assert max(groups) > 1  # they did share passes
    for p, s, events in zip(prompts, settings, results):
        assert same_events(events, list(generate(checkpoint, p, s)))


def test_a_script_that_exits_with_a_stream_still_open_exits_cleanly():
    # the shipped model's steps are long enough that the decoding thread is inside torch when the script ends: a
    # daemon thread stopped there by the interpreter's shutdown aborted the process (SIGABRT)
    script = ("from xldemo import serving\n"
              "from xldemo.checkpoint import load_checkpoint\n"
              "from xldemo.engine import GenerationSettings\n"
              "stream = serving.generate(load_checkpoint(), [65] * 300, GenerationSettings(max_new_tokens=4000))\n"
              "for _, event in zip(range(20), stream):\n"
              "    pass\n")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-300:]
    assert time.monotonic() - began < serving.CANCEL_WAIT_S  # the open stream's close does not wait for its row
