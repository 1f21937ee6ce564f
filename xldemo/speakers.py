"""The speaker-name measure: the share of speaker names in generated text that belong to the prompt's play."""

import re
from collections import Counter
from dataclasses import asdict, dataclass

from .engine import Finished, GenerationSettings, generate
from .errors import XLDemoError

# What counts. A speech opens with a line holding only the speaker's name in capitals and a full stop (`PROSPERO.`,
# `LADY MACBETH.`), the form of the validation and test plays' modern editions; a play's cast is every name that opens
# a speech in it. Act and scene headings share the form and are no speakers. A name that speaks in GENERIC_MIN_PLAYS
# or more of the training plays (SERVANT, MESSENGER, ALL, FIRST LORD, KING, and the histories' YORK or WARWICK) is
# left out of both counts: naming it says nothing about which play is being continued, and counting it would give any
# model hits for free. Every other name is counted, and is a hit when the prompt's play has it in its cast; a name no
# play has is a miss. Hits on names that speak in no training play are counted apart as new: the model can only have
# them from the prompt, where a name shared with a training play (BRUTUS, PORTIA) may come from what it learnt of
# that play. Names in other forms (`Ham.`, or no full stop) are not read.
SPEAKER_LINE = re.compile(r"^([A-Z](?:[A-Z'&. -]*[A-Z])?)\.[ \t]*\r?(?=\n)", re.M)
HEADING = re.compile(r"(?:ACT|SCENE|INDUCTION)\b.*|[IVXLC]+|PERSONS REPRESENTED|DRAMATIS PERSONAE")
# at 3 training plays the list is mostly roles and the histories' recurring lords; at 2 it would take in characters
# that two plays share (FALSTAFF, CLAUDIO, EMILIA), at 4 keep GENTLEMAN, LADY, HOST and FIRST CITIZEN
GENERIC_MIN_PLAYS = 3
# how the card's sample and the app continue a play: the text a visitor sees
TEMPERATURE, TOP_P = 0.8, 0.95
MODES = {"memory": (None, "with memory"), "no_memory": (0, "without memory")}  # key -> (mem_len, label)


@dataclass(frozen=True)
class SpeakerSettings:
    prompts: int = 6  # per play, cut at fixed fractions of it
    prompt_bytes: int = 1536  # six segments of the shipped model: memory has several boundaries to carry across
    new_tokens: int = 512
    samples: int = 8  # decoded as one batch per prompt and mode
    seed: int = 0  # prompt i is decoded with seed + i, the same with memory and without
    phase: float = 0.5  # where in its share of the play a prompt ends: 0.5 is the middle

    def __post_init__(self):
        for name in ("prompts", "prompt_bytes", "new_tokens", "samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise XLDemoError(f"speaker {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.phase < 1:
            raise XLDemoError(f"speaker phase must be in [0, 1), got {self.phase!r}")


def speaker_lines(text: str) -> list[tuple[int, str]]:
    """(offset, name) of every complete line of text that opens a speech, headings left out."""
    return [(m.start(), m.group(1)) for m in SPEAKER_LINE.finditer(text) if not HEADING.fullmatch(m.group(1))]


def speaker_names(text: str) -> list[str]:
    return [name for _, name in speaker_lines(text)]


def cast(play: bytes) -> frozenset[str]:
    """The names that open a speech in play."""
    return frozenset(speaker_names(play.decode("latin-1")))


def speaking_plays(train_plays: dict[str, bytes]) -> Counter:
    """name -> how many of the training plays it speaks in."""
    return Counter(name for text in train_plays.values() for name in cast(text))


def generic_names(trained: Counter, min_plays: int = GENERIC_MIN_PLAYS) -> frozenset[str]:
    """The names that speak in at least min_plays of the training plays; trained is what speaking_plays gives."""
    return frozenset(name for name, plays in trained.items() if plays >= min_plays)


def prompt_ends(play: bytes, count: int, length: int, phase: float = 0.5) -> list[int]:
    """Where count prompts of length bytes end: for k < count, at the first speech opening at or after the point
    (k + phase) / count of the way through the text after its first length bytes, so that the continuation's first
    line is a speaker's name for the model to choose."""
    # latin-1 maps byte to character one to one: offsets in the text are offsets in the bytes
    opens = [offset for offset, _ in speaker_lines(play.decode("latin-1")) if offset >= length]
    ends = []
    for k in range(count):
        target = length + (len(play) - length) * (k + phase) / count
        ends.append(next((o for o in opens if o >= target), opens[-1] if opens else None))
    if None in ends or len(set(ends)) < count:
        raise XLDemoError(f"the play has too few speeches for {count} prompts of {length} bytes")
    return ends


def continue_prompt(checkpoint, prompt: bytes, mem_len: int | None, s: SpeakerSettings, seed: int) -> tuple[str, ...]:
    """s.samples continuations of prompt, decoded as one batch by the engine."""
    settings = GenerationSettings(max_new_tokens=s.new_tokens, temperature=TEMPERATURE, top_p=TOP_P, seed=seed,
                                  mem_len=mem_len, num_samples=s.samples)
    for event in generate(checkpoint, checkpoint.tokenizer.encode(prompt), settings):
        if isinstance(event, Finished):
            return event.texts
    raise XLDemoError("generation ended without a Finished event")


def speaker_measure(checkpoint, plays: dict[str, bytes], trained: Counter, s: SpeakerSettings,
                    log=None, spans: dict[str, list[tuple[int, int]]] | None = None) -> dict:
    """Every prompt of every play continued s.samples times with the model's own memory and without any: the
    names counted (generic ones left out), the hits among them, their share and the new ones, per prompt, per play
    and overall. trained is what speaking_plays gives for the training plays. The prompts are those prompt_ends
    cuts, or the (start, end) byte ranges spans gives for a play."""
    generic = generic_names(trained)
    result = {"settings": {**asdict(s), "temperature": TEMPERATURE, "top_p": TOP_P,
                           "generic_min_plays": GENERIC_MIN_PLAYS},
              "generic_names": sorted(generic), "prompts": [], "plays": {}, "overall": {}}
    index = 0
    for play, text in plays.items():
        members = cast(text)
        cuts = (spans or {}).get(play) or [(end - s.prompt_bytes, end)
                                           for end in prompt_ends(text, s.prompts, s.prompt_bytes, s.phase)]
        for start, end in cuts:
            entry = {"play": play, "start": start, "end": end, "seed": s.seed + index}
            for mode, (mem_len, _) in MODES.items():
                texts = continue_prompt(checkpoint, text[start:end], mem_len, s, s.seed + index)
                counted = Counter(name for t in texts for name in speaker_names(t) if name not in generic)
                hits = {name: n for name, n in counted.items() if name in members}
                entry[mode] = tally(sum(hits.values()), sum(counted.values()),
                                    sum(n for name, n in hits.items() if not trained[name]))
                entry[mode]["written"] = dict(counted.most_common())
            result["prompts"].append(entry)
            index += 1
            if log:
                log(f"speakers: {play} bytes {entry['start']}-{end}: " + ", ".join(
                    f"{label} {entry[mode]['hits']}/{entry[mode]['names']}" for mode, (_, label) in MODES.items()))
    result["plays"] = {play: _totals([e for e in result["prompts"] if e["play"] == play]) for play in plays}
    result["overall"] = _totals(result["prompts"])
    return result


def tally(hits: int, names: int, new: int) -> dict:
    return {"hits": hits, "names": names, "share": hits / names if names else None, "new_hits": new}


def speaker_table(result: dict) -> str:
    """A Markdown table: hits / names and their share with memory and without, per prompt, per play and overall."""
    s = result["settings"]
    lines = [f"Speaker names from the prompt's play: {len(result['prompts'])} prompts (their bytes in the play below), "
             f"each continued {s['samples']} times for {s['new_tokens']} tokens (temperature {s['temperature']}, "
             f"top-p {s['top_p']}, seeds from {s['seed']}); names that speak in {s['generic_min_plays']} or more "
             "training plays are not counted; new: hits on names that speak in no training play.", "",
             "| play | prompt bytes | with memory | without memory | difference |", "|---|---|---:|---:|---:|"]
    rows = [(e["play"], f"{e['start']}-{e['end']}", e) for e in result["prompts"]]
    rows += [(f"**{play}**", "all", totals) for play, totals in result["plays"].items()]
    rows.append(("**all plays**", "all", result["overall"]))
    for play, where, figures in rows:
        cells = [_cell(figures[mode]) for mode in MODES]
        shares = [figures[mode]["share"] for mode in MODES]
        difference = f"{100 * (shares[0] - shares[1]):+.1f} points" if None not in shares else "—"
        lines.append(f"| {play} | {where} | {cells[0]} | {cells[1]} | {difference} |")
    return "\n".join(lines) + "\n"


def _totals(entries: list[dict]) -> dict:
    return {mode: tally(*(sum(e[mode][key] for e in entries) for key in ("hits", "names", "new_hits")))
            for mode in MODES}


def _cell(figures: dict) -> str:
    share = "—" if figures["share"] is None else f"{100 * figures['share']:.1f}%"
    return f"{figures['hits']}/{figures['names']} ({share}), {figures['new_hits']} new"
