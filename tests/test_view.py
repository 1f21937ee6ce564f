"""The view of a run, without gradio: the engine's events folded into segmented HTML and a status line, and the
throttle that spaces updates."""

import json
import re
from contextlib import ExitStack
from html import unescape

import pytest

from conftest import generated_text, labels, tiny_checkpoint, tiny_config, visible_text
from xldemo.details import token_record
from xldemo.engine import Finished, GenerationSettings, Token, generate
from xldemo.errors import XLDemoError
from xldemo.web.memory_html import RANK, DetailedText, token_label
from xldemo.web.view import DETAILED_TOKENS, Run, Throttle, Traffic, compare_status, detailed_from

PROMPT = list(b"To be, or not to be, that is the question")  # 41 bytes: segments of 8, the sixth holds its end


def test_a_run_shows_the_prompt_then_exactly_what_the_engine_writes_by_segment():
    checkpoint = tiny_checkpoint(tiny_config(mem_len=5))
    settings = GenerationSettings(max_new_tokens=30, temperature=0.9, seed=4)
    run, events = Run(checkpoint, PROMPT, settings), []
    assert visible_text(run.view.html()) == bytes(PROMPT).decode() and labels(run.view.html()) == list(range(6))
    while event := run.step():
        events.append(event)
    *_, alone = generate(checkpoint, PROMPT, settings)
    html = run.view.html()
    assert generated_text(html) == alone.texts[0]
    assert visible_text(html) == bytes(PROMPT).decode() + alone.texts[0]
    assert labels(html) == list(range((41 + 30 - 1) // 8 + 1))  # positions 0..70
    assert sum(isinstance(e, Token) for e in events) == 30 and isinstance(events[-1], Finished)
    assert "<b>30</b> new tokens" in run.status() and f"<b>{alone.segments}</b> segments" in run.status()


def test_updates_are_due_at_the_start_the_first_token_new_segments_and_the_end():
    run = Run(tiny_checkpoint(), PROMPT, GenerationSettings(max_new_tokens=20, temperature=0, seed=1))
    due = []
    while event := run.step():
        if run.due_now(event):
            due.append((type(event).__name__, run.tokens))
            run.new_segment = False
    # 41 prompt bytes: generated tokens 8 and 16 open segments 6 and 7 (positions 48 and 56)
    assert due == [("Started", 0), ("Token", 1), ("Token", 8), ("Token", 16), ("Finished", 20)]


def test_the_status_line_is_live_until_the_run_finishes():
    run = Run(tiny_checkpoint(), PROMPT, GenerationSettings(max_new_tokens=3, seed=1))
    assert "reading the prompt" in run.status()
    run.step()  # Started
    run.step()  # the first warm-up segment folded into memory
    assert "warming up memory" in run.status() and 'aria-valuemax="5"' in run.status()
    while run.step():
        pass
    assert "generating" not in run.status() and "<b>1</b> seed" in run.status()


def test_two_runs_that_take_turns_report_their_memory():
    checkpoint = tiny_checkpoint(tiny_config(mem_len=6))
    on_settings = GenerationSettings(max_new_tokens=10, seed=2, mem_len=6)
    on, off = Run(checkpoint, PROMPT, on_settings), Run(checkpoint, PROMPT, GenerationSettings(10, seed=2, mem_len=0))
    while on.step() or off.step():
        pass
    status = compare_status(on, off, on_settings)
    assert "<b>6</b> memory tokens with memory on" in status and "<b>0</b> off" in status and "same seed 2" in status


def test_the_throttle_lets_an_update_through_once_per_interval_unless_forced():
    now = [0]
    throttle = Throttle(every=5, clock=lambda: now[0], traffic=None)
    seen = []
    for step in range(25):
        now[0] = step
        seen.append(throttle.due(force=step == 13))
    assert [i for i, due in enumerate(seen) if due] == [0, 5, 10, 13, 18, 23]


def test_the_throttle_spaces_updates_three_times_as_far_apart_as_the_last_hand_over_took():
    now = [0.0]
    throttle = Throttle(every=1, clock=lambda: now[0], traffic=None)
    assert throttle.due()
    now[0] = 2.0  # the update took 2 s to hand over: the next is due 6 s after it was let through, not 1 s
    throttle.resumed()
    due = []
    for t in (3.0, 5.9, 6.0):
        now[0] = t
        due.append(throttle.due())
    assert due == [False, False, True]
    now[0] = 6.1  # that one was quick: the interval is back to every
    throttle.resumed()
    now[0] = 6.9
    assert not throttle.due() and throttle.due(force=True)
    now[0] = 7.9
    throttle.resumed()  # the forced one took 1 s: 3 s from when it went
    now[0] = 9.8
    assert not throttle.due()
    now[0] = 10.0
    assert throttle.due()


def test_the_memory_view_carries_each_tokens_figures_from_the_engine():
    checkpoint = tiny_checkpoint(tiny_config(mem_len=8))
    prompt = list(range(65, 65 + 26)) * 2  # 52 bytes: its last segment starts at 48, memory reaches back to 40
    settings = GenerationSettings(max_new_tokens=20, temperature=0.8, seed=3, details=True)
    run = Run(checkpoint, prompt, settings, colouring="rank")
    while run.step():
        pass
    tokens = [e for e in generate(checkpoint, prompt, settings) if isinstance(e, Token)]
    html = run.view.html()
    spans = re.findall(r'<span class="xl-t xl-generated ([^"]*)" ([^>]*)>', html)
    assert len(spans) == 20 and 'data-colour="rank"' in html
    for (classes, attributes), token in zip(spans, tokens):
        data = {k: unescape(v) for k, v in re.findall(r'(data-[a-z]+)="([^"]*)"', attributes)}
        assert int(data["data-p"]) == token.position and int(data["data-rank"]) == token.details.rank
        assert int(data["data-s"]) == (token.position - 1) // 8 * 8  # the segment of the query that produced it
        assert [[p, round(w, 4)] for p, w in token.details.attended] == json.loads(data["data-att"])
        assert [t[0] for t in json.loads(data["data-top"])] == [i for i, _ in token.details.top]
        assert f"xl-r{RANK.level(token.details.rank)}" in classes.split()
    # the prompt from the memory's reach on, one span per character, each naming its position
    shown = re.findall(r'<span class="xl-c xl-prompt" data-p="(\d+)" data-e="(\d+)">', html)
    assert [int(p) for p, _ in shown] == list(range(40, 52))
    assert "40 earlier prompt tokens" in html
    assert run.data()["tokens"] == [token_record(t) for t in tokens]


def test_token_labels_show_whitespace_and_partial_characters():
    tokenizer = tiny_checkpoint().tokenizer
    assert [token_label(tokenizer, i) for i in (ord("a"), ord(" "), ord("\n"), 0xC3)] == ["a", "␣", "↵", "0xC3"]


def test_a_256_kb_prompt_sends_the_memory_view_only_what_memory_can_reach():
    tokenizer, seg_len, mem_len = tiny_checkpoint().tokenizer, 256, 256
    ids = list(b"ALONSO. Good boatswain, have care. Where's the master?\n" * 4900)[:256 * 1024]
    first = detailed_from(ids, seg_len, mem_len)
    assert first == 256 * 1024 - seg_len - mem_len  # the prompt's last segment and the one memory holds
    html = DetailedText(tokenizer, ids, seg_len, first, "rank").html()
    assert len(html) < 40_000 and html.count('class="xl-c xl-prompt"') == seg_len + mem_len
    assert f"{first:,} earlier prompt tokens are in memory or gone from it" in html
    assert detailed_from(ids, seg_len, 10**6) == 256 * 1024 - DETAILED_TOKENS  # however long the memory


def due_at(throttle: Throttle, now: list[float], times: tuple[float, ...]) -> list[bool]:
    """throttle.due() at each of times, the clock reading now[0]."""
    due = []
    for now[0] in times:
        due.append(throttle.due())
    return due


def test_streams_at_once_share_the_servers_updates_and_give_their_share_back_however_they_end():
    now, traffic = [0.0], Traffic(per_second=2)
    with Throttle(every=1, clock=lambda: now[0], traffic=traffic) as one:
        assert traffic.streams == 1 and traffic.spacing() == 0.5  # alone: every second, as without traffic
        assert due_at(one, now, (0.0, 0.9, 1.0)) == [True, False, True]
        with ExitStack() as others:
            for _ in range(3):
                others.enter_context(Throttle(every=1, clock=lambda: now[0], traffic=traffic))
            assert traffic.streams == 4  # 4 streams at 2 updates a second in all: each every 2 s
            assert due_at(one, now, (2.0, 2.9, 3.0)) == [False, False, True]
            assert one.due(force=True)  # the first token, a boundary, the end: at once all the same
        now[0] = 4.0
        assert one.due()  # alone again: every second
    assert traffic.streams == 0
    try:
        with Throttle(traffic=traffic):
            assert traffic.streams == 1
            raise ValueError("a run that fails")
    except ValueError:
        pass
    assert traffic.streams == 0


@pytest.mark.parametrize("rate", [0, -1, float("nan")])
def test_an_update_budget_of_nothing_is_refused(rate):
    with pytest.raises(XLDemoError, match="updates a second must be above 0"):
        Traffic(rate)


def test_the_operator_sets_the_servers_update_budget(monkeypatch, tmp_path):
    from xldemo.web.layout import configured_handlers
    from xldemo.web.view import TRAFFIC

    assert configured_handlers(str(tmp_path)).traffic is TRAFFIC  # one budget for all of the server's handlers
    monkeypatch.setenv("XLDEMO_UPDATES_PER_S", "100")
    assert configured_handlers(str(tmp_path)).traffic.per_second == 100
