"""The app's HTML: segment labels, append-only streaming, escaping, folding and surprisal colours."""

import math
import re
from dataclasses import replace

from conftest import labels, visible_text
from xldemo.engine import Finished, Started
from xldemo.web import render
from xldemo.examples import load_examples
from xldemo.tokenizer import ByteTokenizer


def test_escape_leaves_no_markup_or_template_syntax():
    text = "<script>alert(1)</script> & ${value} {{value}} \"'"
    escaped = render.escape(text)
    assert "<" not in escaped and ">" not in escaped and "$" not in escaped and "{" not in escaped
    assert visible_text(escaped) == text


def test_segmented_text_labels_every_segment_and_only_grows_at_its_end():
    view, seen = render.SegmentedText(), ""
    segments = render.split_segments(list(b"abcdefghij"), 4, ByteTokenizer().stream_decoder())
    assert segments == ["abcd", "efgh", "ij"]
    render.add_prompt(view, segments, max_shown_bytes=1000)
    for i, piece in enumerate(["k", "l", "<m>", "n", "o"]):
        position = 10 + i
        if position % 4 == 0:
            view.open_segment(position // 4)
        view.add(position // 4, "generated", piece)
        html = view.html()
        assert html.startswith(seen)  # Gradio then sends only the new end
        seen = html
    assert labels(seen) == [0, 1, 2, 3]
    assert visible_text(seen) == "abcdefghijkl<m>no"
    generated = "".join(re.findall(r'<span class="xl-generated[^"]*">([^<]*)</span>', seen))
    assert visible_text(generated) == "kl<m>no"
    assert 'class="xl-prompt xl-s0">abcd<' in seen and 'class="xl-generated xl-s1"' in seen


def test_a_character_cut_by_a_boundary_belongs_to_the_segment_where_it_completes():
    ids = list("aé".encode())  # 3 bytes: a, then é as two
    assert render.split_segments(ids, 2, ByteTokenizer().stream_decoder()) == ["a", "é"]


def test_long_prompts_fold_their_leading_segments_into_one_line():
    view = render.SegmentedText()
    render.add_prompt(view, ["a" * 10] * 10, max_shown_bytes=35)
    html = view.html()
    assert labels(html) == [7, 8, 9]
    assert "segments 0–6: 70 prompt bytes, folded into memory" in html
    single = render.SegmentedText()
    render.add_prompt(single, ["a" * 100], max_shown_bytes=10)  # the last segment always shows
    assert labels(single.html()) == [0]


def test_surprisal_colours_each_byte_and_merges_runs():
    ids = list(b"abcdef")
    bits = [0.1, 0.2, 5.0, 9.0, 9.5]  # for b..f
    pieces = render.byte_pieces(ids, bits, 4, ByteTokenizer().stream_decoder())
    assert pieces == [("a", None, 0), ("b", 0.1, 0), ("c", 0.2, 0), ("d", 5.0, 0), ("e", 9.0, 1), ("f", 9.5, 1)]
    html = render.coloured_html(pieces, render.SURPRISAL)
    assert labels(html) == [0, 1]
    assert '<span class="xl-bna">a</span><span class="xl-b0">bc</span><span class="xl-b5">d</span>' in html
    assert '<span class="xl-b7">ef</span>' in html
    assert visible_text(html) == "abcdef"


def test_scales_put_values_in_levels_and_explain_them_in_a_legend():
    assert [render.SAVING.level(v) for v in (-3, -1, -0.5, 0, 0.5, 1.5, 3, 9)] == [0, 0, 1, 2, 3, 4, 5, 6]
    legend = render.SURPRISAL.legend()
    assert legend.count("<span") == len(render.SURPRISAL.bounds) + 1
    assert "≤ 0.5" in legend and "&gt; 8" in legend and "bits spent" in legend
    for i in range(len(render.SAVING.bounds) + 1):  # every level has a colour
        assert f".xl-d{i} " in render.CSS


def test_surprisal_of_a_multibyte_character_is_the_mean_of_its_bytes():
    pieces = render.byte_pieces(list("aé".encode()), [1.0, 3.0], 8, ByteTokenizer().stream_decoder())
    assert pieces == [("a", None, 0), ("é", 2.0, 0)]


def test_surprisal_summary_reports_what_memory_saves():
    html = render.surprisal_summary([1.0] * 4 + [2.0] * 4, [1.0] * 4 + [3.0] * 4, 4, 9, 20)
    assert "<b>0.500</b> bits/byte saved by memory" in html
    assert "<b>1.000</b> saved after segment 0" in html
    assert "scored the first 9 of 20 bytes" in html
    tokens = render.surprisal_summary([1.0] * 8, [1.5] * 8, 4, 8, 8, unit="token")
    assert "<b>0.500</b> bits/token saved by memory" in tokens and "scored all 8 tokens" in tokens


def test_stats_line_escapes_and_shows_rates():
    finished = Finished(reasons=("length",), token_ids=((1, 2, 3, 4),), texts=("abcd",), warmup_s=0.5,
                        time_to_first_token_s=0.75, decode_tokens_per_s=123.45, segments=3, memory_tokens=16)
    started = Started(decoder="fast", prompt_tokens=20, segment_len=8, mem_len=16, seed=7)
    html = render.stats_line(render.generation_stats(finished, started))
    for chip in ("<b>4</b> new tokens", "<b>3</b> segments", "<b>16</b> tokens in memory per layer",
                 "<b>0.50 s</b> memory warm-up",
                 "<b>0.75 s</b> to first token", "<b>123.5</b> tokens/s", "<b>7</b> seed",
                 "<b>max new tokens</b> reached"):
        assert chip in html
    unknown_rate = replace(finished, decode_tokens_per_s=math.nan)
    assert "<b>–</b> tokens/s" in render.stats_line(render.generation_stats(unknown_rate, started))
    assert "&lt;b&gt;" in render.stats_line([("<b>", "x")])


def test_progress_line_shows_the_fraction_done():
    html = render.progress_line("warming up", 3, 12)
    assert "<b>3</b> of <b>12</b>" in html and "width:25.0%" in html


def test_shipped_examples_span_several_segments_and_one_opens_with_a_cast_list():
    examples = load_examples()
    assert len(examples) >= 3
    for text in examples.values():
        assert 3 * 256 < len(text.encode()) <= 8 * 1024
    assert any(text.startswith("THE TEMPEST") and "DRAMATIS PERSONAE" in text[:200] for text in examples.values())
