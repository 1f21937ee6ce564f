"""The view of a run, without gradio: the engine's events folded into segmented HTML and a status line, and the
throttle that spaces updates."""

from conftest import generated_text, labels, tiny_checkpoint, tiny_config, visible_text
from xldemo.engine import Finished, GenerationSettings, Token, generate
from xldemo.web.view import Run, Throttle, compare_status

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
    throttle = Throttle(every=5, clock=lambda: now[0])
    seen = []
    for step in range(25):
        now[0] = step
        seen.append(throttle.due(force=step == 13))
    assert [i for i, due in enumerate(seen) if due] == [0, 5, 10, 13, 18, 23]
