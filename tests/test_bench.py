"""The benchmark: its arithmetic on timings we choose, then every row measured for real at toy scale."""

import json
import math

import pytest

from conftest import tiny_checkpoint, tiny_config
from xldemo import bench
from xldemo.bench import BenchSettings, format_table, peak_rss_growth, run_bench
from xldemo.checkpoint import save_checkpoint
from xldemo.errors import XLDemoError


def tiny_config_file(tmp_path):
    """A config.json of a tiny model, for a bench of a random model of its shape."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_config()))
    return path


def test_rows_are_medians_of_interleaved_rounds_of_long_minus_short_runs(tmp_path, monkeypatch):
    """Timings are made up: per round, the reference decodes 64 tokens in 0.64 s more than 1 token (100 tokens/s)
    in one round, 50 and 200 in the others; xldemo at 400, 300 and 500, with details at 200, 150 and 300; the
    medians are 100, 400 and 200."""
    rates = {"reference": iter([100, 50, 200]), "xldemo": iter([400, 300, 500]), "details": iter([200, 150, 300])}
    ttft = {"reference": iter([3.0, 2.0, 9.0]), "xldemo": iter([1.5, 1.0, 0.5])}

    calls = []

    def reference_seconds(reference, prompt, new_tokens):
        calls.append(("reference", new_tokens, len(prompt)))
        if len(prompt) == 40:
            return next(ttft["reference"])
        return 1.0 if new_tokens == 1 else 1.0 + 64 / next(rates["reference"])

    def xldemo_seconds(checkpoint, prompt, new_tokens, decoder, details=False):
        side = "details" if details else "xldemo"
        calls.append((side, new_tokens, len(prompt)))
        return 1.0 if new_tokens == 1 else 1.0 + 64 / next(rates[side])

    monkeypatch.setattr(bench, "_reference_seconds", reference_seconds)
    monkeypatch.setattr(bench, "_xldemo_seconds", xldemo_seconds)
    monkeypatch.setattr(bench, "_xldemo_first_token_seconds", lambda *args: next(ttft["xldemo"]))
    config = tiny_config_file(tmp_path)
    rows, about = run_bench(BenchSettings(random_config=str(config), new_tokens=65, prompt_segments=2,
                                          ttft_prompt_bytes=40, memory_prompt_bytes="", repeats=3, cli_repeats=0,
                                          app_repeats=0, streams=""))
    speed, details, first = rows
    assert math.isclose(speed.reference, 100) and math.isclose(speed.xldemo, 400) and math.isclose(speed.ratio, 4)
    assert details.reference is None and math.isclose(details.xldemo, 200) and math.isclose(details.ratio, 2)
    assert "(0.50x the speed without)" in details.metric
    assert (first.reference, first.xldemo) == (3.0, 1.0) and math.isclose(first.ratio, 3)
    # the sides take turns, a long run and a 1-token run each, round after round
    decode = [(side, n) for side, n, length in calls if length == 16]
    assert decode == [("reference", 65), ("reference", 1), ("xldemo", 65), ("xldemo", 1), ("details", 65),
                      ("details", 1)] * 3
    table = format_table(rows, about)
    assert "| 100 | 400 | 4.00x |" in table and "| — | 200 | 2.00x |" in table and "| 3 | 1 | 3.00x |" in table


def test_bench_measures_both_sides_on_a_tiny_random_model(tmp_path):
    config = tiny_config_file(tmp_path)
    # enough tokens and rounds that a long run minus a 1-token one outweighs a busy machine's noise
    settings = BenchSettings(random_config=str(config), new_tokens=64, prompt_segments=2, ttft_prompt_bytes=40,
                             memory_prompt_bytes="", repeats=3, cli_repeats=0, app_repeats=0, streams="")
    rows, about = run_bench(settings)
    speed, details, first = rows
    assert about["decoder"] == "fast" and (speed.metric, first.metric) == (
        "decode tokens/s (greedy, 16-token prompt)", "time to first token, 40 B prompt (s)")
    assert details.metric.startswith("decode tokens/s with per-token details, same rounds (")
    assert details.reference is None and math.isfinite(details.xldemo) and details.xldemo > 0
    assert all(math.isfinite(value) and value > 0 for row in (speed, first) for value in (row.reference, row.xldemo))


def test_serving_rows_give_rates_all_together_and_per_stream_and_memory_per_stream(tmp_path):
    config = tiny_config_file(tmp_path)
    settings = BenchSettings(random_config=str(config), new_tokens=48, prompt_segments=2, ttft_prompt_bytes=20,
                             memory_prompt_bytes="", repeats=1, cli_repeats=0, app_repeats=0, streams="1,3")
    rows, _ = run_bench(settings)
    serving = [row for row in rows if "at once" in row.metric]
    assert [row.metric.split(",")[0] for row in serving] == [
        "decode tokens/s", "decode tokens/s per stream", "peak RSS growth per stream"] * 2
    assert all("3 at once" in row.metric for row in serving[3:]) and "1 at once" in serving[0].metric
    for total, each, memory in (serving[:3], serving[3:]):
        assert math.isfinite(total.xldemo) and total.xldemo >= each.xldemo > 0 and total.ratio > 0
        assert memory.xldemo >= 0 and memory.ratio is None


def test_serving_rows_through_decoding_processes_take_turns_with_the_scheduler_in_process(tmp_path):
    config = tiny_config_file(tmp_path)
    settings = BenchSettings(random_config=str(config), new_tokens=48, prompt_segments=2, ttft_prompt_bytes=20,
                             memory_prompt_bytes="", repeats=1, cli_repeats=0, app_repeats=0, streams="2",
                             stream_processes="0,2")
    rows, _ = run_bench(settings)
    serving = [row for row in rows if "at once" in row.metric]
    assert ["through the scheduler" in row.metric for row in serving] == [True] * 3 + [False] * 3
    assert all("through 2 decoding processes" in row.metric for row in serving[3:])
    total, each, memory = serving[3:]
    assert math.isfinite(total.xldemo) and total.xldemo >= each.xldemo > 0 and memory.xldemo >= 0
    for bad in ("-1", "x", ""):
        with pytest.raises(XLDemoError, match="stream_processes must be comma-separated counts of 0 or more"):
            BenchSettings(stream_processes=bad)


def test_peak_rss_growth_counts_what_a_run_allocates(tmp_path):
    checkpoint = tiny_checkpoint()
    save_checkpoint(checkpoint.model, checkpoint.config, tmp_path)
    for side in ("reference", "xldemo"):
        growth = peak_rss_growth(side, str(tmp_path), prompt_bytes=64, new_tokens=4)
        assert math.isfinite(growth) and growth >= 0, side


def test_the_app_row_reads_the_stats_line_of_a_served_app(tmp_path):
    checkpoint = tiny_checkpoint()
    save_checkpoint(checkpoint.model, checkpoint.config, tmp_path / "tiny")
    settings = BenchSettings(checkpoint=str(tmp_path / "tiny"), new_tokens=4, prompt_segments=2, ttft_prompt_bytes=20,
                             memory_prompt_bytes="", repeats=1, cli_repeats=0, app_repeats=1, cli_new_tokens=40,
                             streams="")
    rows, _ = run_bench(settings)
    app = next(row for row in rows if "app" in row.metric)
    assert app.reference is None and math.isfinite(app.xldemo) and app.xldemo > 0
