"""HTML for the app: text cut into labelled XL segments, stats lines, and prompt bytes coloured by surprisal."""

import html
import math
from dataclasses import dataclass
from pathlib import Path


def escape(text: str) -> str:
    """HTML-escaped text; $, { and } become entities too, so gr.HTML's template pass leaves them literal."""
    return html.escape(text).replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;")


class SegmentedText:
    """A growing text cut into segments, as HTML that only ever grows at its end (so Gradio streams it as small
    appends): each segment opens with a `segment N` label, and prompt and generated text are styled apart."""

    def __init__(self):
        self._html = ""
        self._pending: list[str] = []  # text not yet in _html, all of one style
        self._style = (0, "prompt")  # (segment, source) of the pending text

    def open_segment(self, index: int) -> None:
        self._flush()
        self._html += f'<span class="xl-label xl-s{index % 2}" data-segment="{index}">segment {index}</span>'

    def add(self, segment: int, source: str, text: str) -> None:
        """source: "prompt" or "generated"."""
        if not text:
            return
        if (segment, source) != self._style:
            self._flush()
            self._style = (segment, source)
        self._pending.append(text)

    def add_token(self, token) -> None:
        """A generated token (an engine Token event)."""
        self.add(token.segment, "generated", token.text)

    def fold(self, first: int, last: int, n_bytes: int) -> None:
        """One line standing for segments first..last, which are not shown."""
        self._flush()
        span = f"segment {first}" if first == last else f"segments {first}–{last}"
        self._html += (f'<span class="xl-fold" data-segment="{first}">{span}: {n_bytes:,} prompt bytes, '
                       f'folded into memory (not shown)</span>')

    def html(self) -> str:
        self._flush()
        return self._html

    def _flush(self) -> None:
        if self._pending:
            segment, source = self._style
            self._html += f'<span class="xl-{source} xl-s{segment % 2}">{escape("".join(self._pending))}</span>'
            self._pending = []


def split_segments(ids: list[int], seg_len: int, decoder) -> list[str]:
    """The text of each seg_len slice of ids, decoded by a tokenizer's stream decoder; a character that a
    boundary cuts belongs to the segment where it completes."""
    texts = ["".join(decoder.push(t) for t in ids[start:start + seg_len]) for start in range(0, len(ids), seg_len)]
    texts[-1] += decoder.flush()
    return texts


def add_prompt(view: SegmentedText, segments: list[str], max_shown_bytes: int) -> None:
    """Opens every prompt segment in view; the leading ones beyond the last max_shown_bytes are folded into
    one line (the last segment is always shown)."""
    sizes = [len(text.encode("utf-8")) for text in segments]
    first_shown, shown = len(segments) - 1, sizes[-1]
    while first_shown > 0 and shown + sizes[first_shown - 1] <= max_shown_bytes:
        first_shown -= 1
        shown += sizes[first_shown]
    if first_shown > 0:
        view.fold(0, first_shown - 1, sum(sizes[:first_shown]))
    for index in range(first_shown, len(segments)):
        view.open_segment(index)
        view.add(index, "prompt", segments[index])


def stats_line(items: list[tuple[str, str]], note: str = "") -> str:
    """Chips of (value, what it counts), e.g. ("6", "segments"), then an optional note."""
    chips = "".join(f'<span class="xl-stat"><b>{escape(value)}</b> {escape(label)}</span>' for value, label in items)
    return f'<div class="xl-stats">{chips}{_note(note)}</div>'


def live_line(items: list[tuple[str, str]], note: str = "") -> str:
    """A stats line for a run still going: is_live tells it from a final one."""
    return stats_line(items, note).replace('class="xl-stats"', 'class="xl-stats xl-live"', 1)


def progress_line(label: str, done: int, total: int) -> str:
    """A live line with a progress bar."""
    percent = 100.0 * done / total if total else 100.0
    return (f'<div class="xl-stats xl-live"><span class="xl-stat">{escape(label)} <b>{done}</b> of <b>{total}</b>'
            f'</span><span class="xl-bar" role="progressbar" aria-valuenow="{done}" aria-valuemin="0" '
            f'aria-valuemax="{total}"><span style="width:{percent:.1f}%"></span></span></div>')


def message_line(text: str) -> str:
    return f'<div class="xl-stats">{_note(text)}</div>'


def is_live(line: str | None) -> bool:
    return bool(line) and line.startswith('<div class="xl-stats xl-live"')


def generation_stats(finished, started) -> list[tuple[str, str]]:
    """The stats chips of a finished run: engine Finished and Started events."""
    return [(f"{len(finished.token_ids[0])}", "new tokens"),
            (f"{finished.segments}", "segments"),
            (f"{finished.memory_tokens}", "tokens in memory per layer"),
            (f"{finished.warmup_s:.2f} s", "memory warm-up"),
            (f"{finished.time_to_first_token_s:.2f} s", "to first token"),
            (_rate(finished.decode_tokens_per_s), "tokens/s"),
            (f"{started.seed}", "seed"),
            REASONS.get(finished.reason, (finished.reason, "ended the run"))]


REASONS = {"length": ("max new tokens", "reached"), "stop": ("stop string", "found"), "eos": ("end of text", "reached")}


def byte_pieces(ids: list[int], values: list[float], seg_len: int, decoder) -> list[tuple[str, float | None, int]]:
    """(text, value per byte, segment) per decoded piece of ids, where values[i] belongs to ids[i + 1] (as bits
    the model spends predicting it do), so the first piece has none. A character of several bytes gets the mean
    of theirs."""
    pieces, spent, count = [], 0.0, 0
    for position, token in enumerate(ids):
        if position > 0:
            spent, count = spent + values[position - 1], count + 1
        text = decoder.push(token)
        if position == len(ids) - 1:
            text += decoder.flush()
        if text:
            pieces.append((text, spent / count if count else None, position // seg_len))
            spent, count = 0.0, 0
    return pieces


@dataclass(frozen=True)
class Scale:
    """Colour levels for a per-byte number: level i holds values up to bounds[i] (the last, everything above);
    its CSS class is prefix + i."""
    prefix: str
    bounds: tuple[float, ...]
    title: str

    def level(self, value: float) -> int:
        return next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))

    def legend(self) -> str:
        cells = [f"≤ {_number(self.bounds[0])}"]
        cells += [f"{_number(low)} to {_number(high)}" for low, high in zip(self.bounds, self.bounds[1:])]
        cells.append(f"&gt; {_number(self.bounds[-1])}")
        spans = "".join(f'<span class="{self.prefix}{i}">{cell}</span>' for i, cell in enumerate(cells))
        return f'<div class="xl-legend">{escape(self.title)}: {spans}</div>'


SURPRISAL = Scale("xl-b", (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0), "bits spent")
SAVING = Scale("xl-d", (-1.0, -0.25, 0.25, 1.0, 2.0, 4.0), "bits saved by memory")


def coloured_html(pieces: list[tuple[str, float | None, int]], scale: Scale) -> str:
    """The text with each piece's background showing its level on scale; runs of one level share a span, and
    each segment opens with its label."""
    out, run, style, segment = [], [], None, -1
    for text, value, seg in pieces:
        if seg != segment:
            out.append(_run_html(run, style))
            run, style, segment = [], None, seg
            out.append(f'<span class="xl-label xl-s{seg % 2}" data-segment="{seg}">segment {seg}</span>')
        level = f"{scale.prefix}na" if value is None else f"{scale.prefix}{scale.level(value)}"
        if level != style:
            out.append(_run_html(run, style))
            run, style = [], level
        run.append(text)
    out.append(_run_html(run, style))
    return "".join(out)


def surprisal_summary(bits_on: list[float], bits_off: list[float], seg_len: int, scored: int, prompt_tokens: int,
                      unit: str = "byte") -> str:
    """Mean bits per token (a byte, for byte models) with and without memory, over the whole text and after its
    first segment (where the two can differ)."""
    def mean(values):
        return sum(values) / len(values) if values else math.nan

    on, off = mean(bits_on), mean(bits_off)
    # bits[i] predicts token i + 1 from position i; memory first acts at position seg_len
    later_on, later_off = mean(bits_on[seg_len:]), mean(bits_off[seg_len:])
    items = [(f"{off - on:.3f}", f"bits/{unit} saved by memory"),
             (f"{on:.3f}", f"bits/{unit} with memory"), (f"{off:.3f}", "without")]
    if bits_on[seg_len:]:
        items.append((f"{later_off - later_on:.3f}", "saved after segment 0"))
    note = (f"scored the first {scored:,} of {prompt_tokens:,} {unit}s" if scored < prompt_tokens
            else f"scored all {scored:,} {unit}s")
    return stats_line(items, note)


def _run_html(run: list[str], style: str | None) -> str:
    return f'<span class="{style}">{escape("".join(run))}</span>' if run else ""


def _number(value: float) -> str:
    return f"{value:g}".replace("-", "−")  # a typographic minus


def _note(text: str) -> str:
    return f'<span class="xl-note">{escape(text)}</span>' if text else ""


def _rate(per_s: float) -> str:
    return "–" if math.isnan(per_s) else f"{per_s:.1f}"


# styles for everything above, scoped to each gr.HTML by its css_template
CSS = (Path(__file__).resolve().parent / "assets" / "view.css").read_text()
