"""HTML of what each generated token read: the generated text coloured by probability, rank or attention on
memory, each token carrying its alternatives and the positions it attended to, and the prompt's last positions
addressable one character at a time so that those positions can be lit up on the page."""

import json
import math

from ..engine import Token
from .render import Scale, escape

# GLTR's buckets, narrowed for small vocabularies such as bytes: the first choice, the next two, up to the tenth
RANK = Scale("xl-r", (0, 2, 9), "rank among the model's choices (0 is its first)")
PROBABILITY = Scale("xl-q", (0.01, 0.05, 0.2, 0.5), "probability the model gave the token")
MEMORY = Scale("xl-m", (0.05, 0.15, 0.3, 0.5), "share of attention on memory")
COLOURINGS = {"probability": PROBABILITY, "rank": RANK, "attention on memory": MEMORY}
# shown in place of characters that would be invisible in a list of alternatives
VISIBLE = {"\n": "↵", " ": "␣", "\t": "⇥", "": "∅"}


def token_label(tokenizer, token_id: int) -> str:
    """A token's text as a reader can see it in a list: whitespace marked, a byte that is only part of a UTF-8
    character shown by its value."""
    text = tokenizer.decode([token_id])
    if "\ufffd" in text and token_id < 256:
        return f"0x{token_id:02X}"
    return VISIBLE.get(text, text)


class DetailedText:
    """The view of a run with details: a fold line for the prompt before `first_shown`, then segments labelled as
    in the plain view, prompt characters as spans that know their positions, and generated tokens as spans that
    carry their details. Grows at its end."""

    def __init__(self, tokenizer, ids: list[int], seg_len: int, first_shown: int, colouring: str):
        self.tokenizer, self.seg_len = tokenizer, seg_len
        first_shown -= first_shown % seg_len  # from a segment's start, so that its label shows
        self._html = f'<div class="xl-inspect" data-colour="{escape(colouring)}">{legends()}'
        if first_shown:
            self._html += (f'<span class="xl-fold" data-segment="0">{first_shown:,} earlier prompt tokens are in '
                           f'memory or gone from it; the page shows the last {len(ids) - first_shown:,} and every '
                           f'generated token</span>')
        decoder, start = tokenizer.stream_decoder(), first_shown
        for position in range(first_shown, len(ids)):
            if position % seg_len == 0:
                self.open_segment(position // seg_len)
            text = decoder.push(ids[position]) + (decoder.flush() if position == len(ids) - 1 else "")
            if text:
                self._html += (f'<span class="xl-c xl-prompt" data-p="{start}" data-e="{position + 1}">'
                               f'{escape(text)}</span>')
                start = position + 1

    def open_segment(self, index: int) -> None:
        self._html += f'<span class="xl-label xl-s{index % 2}" data-segment="{index}">segment {index}</span>'

    def add_token(self, token: Token) -> None:
        details = token.details
        query = token.position - 1  # the position whose query produced the token's logits
        share = sum(details.memory_share) / len(details.memory_share)
        levels = " ".join(f"{scale.prefix}{scale.level(value)}" for scale, value in
                          ((PROBABILITY, math.exp(token.logprob)), (RANK, details.rank),
                           (MEMORY, share)))
        top = [[token_id, token_label(self.tokenizer, token_id), round(logprob, 4)] for token_id, logprob in
               details.top]
        attrs = {"data-p": token.position, "data-e": token.position + 1, "data-s": query - query % self.seg_len,
                 "data-lp": round(token.logprob, 4), "data-rank": details.rank,
                 "data-label": token_label(self.tokenizer, token.id),
                 "data-top": json.dumps(top, ensure_ascii=False),
                 "data-mem": json.dumps([round(s, 4) for s in details.memory_share]),
                 "data-att": json.dumps([[p, round(w, 4)] for p, w in details.attended])}
        attributes = " ".join(f'{name}="{escape(str(value))}"' for name, value in attrs.items())
        self._html += f'<span class="xl-t xl-generated {levels}" {attributes}>{escape(token.text)}</span>'

    def html(self) -> str:
        return self._html + "</div>"


def legends() -> str:
    """One legend per colouring; the view shows the one chosen."""
    return "".join(f'<div class="xl-legend-for" data-colouring="{escape(name)}">{scale.legend()}</div>'
                   for name, scale in COLOURINGS.items())
