"""The benchmark at toy scale: every row measured, finite, and printed."""

import json
import math

from conftest import tiny_checkpoint, tiny_config
from xldemo.bench import BenchSettings, format_table, peak_rss_growth, run_bench
from xldemo.checkpoint import save_checkpoint


def test_bench_measures_both_sides_on_a_tiny_random_model(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config()))
    # enough tokens and rounds that a long run minus a 1-token one outweighs a busy machine's noise
    settings = BenchSettings(random_config=str(config), new_tokens=64, prompt_segments=2, ttft_prompt_bytes=40,
                             memory_prompt_bytes="", repeats=3, cli_repeats=0, app_repeats=0)
    rows, about = run_bench(settings)
    assert len(rows) == 2 and about["decoder"] == "fast"
    speed, time_to_first = rows
    assert math.isfinite(speed.ratio) and speed.xldemo > 0 and speed.reference > 0
    assert speed.ratio == speed.xldemo / speed.reference
    assert 0 < time_to_first.xldemo < 60 and 0 < time_to_first.reference < 60
    table = format_table(rows, about)
    assert all(row.metric in table for row in rows) and "fast decoder" in table


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
                             memory_prompt_bytes="", repeats=1, cli_repeats=0, app_repeats=1, cli_new_tokens=40)
    rows, _ = run_bench(settings)
    app = next(row for row in rows if "app" in row.metric)
    assert app.reference is None and app.xldemo > 0 and app.ratio == app.xldemo / rows[0].reference
