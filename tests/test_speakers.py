"""The speaker-name measure: what counts as a speaker, the generic names, where prompts are cut, and the counts."""

from collections import Counter

import pytest

from conftest import tiny_checkpoint, tiny_config
from xldemo import XLDemoError, speakers
from xldemo.speakers import (MODES, SpeakerSettings, cast, generic_names, prompt_ends, speaker_lines,
                             speaker_measure, speaker_names, speaker_table, speaking_plays)

SCENE = """ACT I.

SCENE II. A heath.

[Enter three Witches]

FIRST WITCH.
When shall we three meet again?

LADY MACBETH.  
Out, damned spot!
I. 
MRS. PAGE.
Ham.
Not a speaker in this edition's form.

HELENA
Nor this.
The line ends. PROSPERO.
XIII.
DRAMATIS PERSONAE.
GONZALO."""


def test_speaker_lines_are_whole_lines_of_a_name_in_capitals_and_a_full_stop():
    assert speaker_names(SCENE) == ["FIRST WITCH", "LADY MACBETH", "MRS. PAGE"]
    offset, name = speaker_lines(SCENE)[1]
    assert SCENE[offset:].startswith(name + ".") and SCENE[offset - 1] == "\n"
    # a last line the generation cut off may be a name still being written
    assert speaker_names(SCENE + "\n") == ["FIRST WITCH", "LADY MACBETH", "MRS. PAGE", "GONZALO"]
    assert speaker_names("ROSS.\r\nWhat news?\n") == ["ROSS"]


def play(*speakers: str, filler: int = 40) -> bytes:
    return "".join(f"\n{s}.\n{'x' * filler}\n" for s in speakers).encode()


def test_generic_names_speak_in_at_least_so_many_training_plays():
    plays = {"a": play("SERVANT", "ALL", "HAMLET"), "b": play("SERVANT", "ALL", "OTHELLO", "OTHELLO"),
             "c": play("SERVANT", "LEAR"), "sonnets": b"No speakers here.\n"}
    trained = speaking_plays(plays)
    assert trained == {"SERVANT": 3, "ALL": 2, "HAMLET": 1, "OTHELLO": 1, "LEAR": 1}
    assert generic_names(trained) == {"SERVANT"}
    assert generic_names(trained, min_plays=2) == {"SERVANT", "ALL"}
    assert cast(plays["b"]) == {"SERVANT", "ALL", "OTHELLO"}


def test_prompts_end_where_a_speech_opens_at_fixed_places():
    text = play(*[f"NAME{chr(65 + i)}" for i in range(20)])
    opens = [offset for offset, _ in speaker_lines(text.decode("latin-1"))]
    ends = prompt_ends(text, 4, 100)
    assert ends == sorted(set(ends)) and set(ends) <= set(opens) and ends[0] >= 100
    for k, end in enumerate(ends):  # the first opening at or after its point
        target = 100 + (len(text) - 100) * (k + 0.5) / 4
        assert end >= target and not any(target <= o < end for o in opens)
    assert prompt_ends(text, 4, 100, phase=0.1) != ends
    assert text[ends[0] - 100:ends[0]].endswith(b"\n")
    with pytest.raises(XLDemoError, match="too few speeches for 30 prompts of 100 bytes"):
        prompt_ends(text, 30, 100)


def test_measure_counts_hits_among_names_not_generic_with_memory_and_without(monkeypatch):
    written = {None: ["PROSPERO.\nHa.\n\nBOULT.\nNo.\n\nSERVANT.\nSir.\n", "MIRANDA.\nO!\n"],
               0: ["BOULT.\nAy.\n\nGOWER.\nSo.\n\nPROSPERO", "ALL.\nHail.\n"]}
    calls = []

    def fake(checkpoint, prompt, mem_len, s, seed):
        calls.append((prompt, mem_len, seed))
        return written[mem_len]

    monkeypatch.setattr(speakers, "continue_prompt", fake)
    tempest = play("PROSPERO", "MIRANDA", "ALL", "SERVANT", filler=200) * 3
    s = SpeakerSettings(prompts=2, prompt_bytes=300, seed=7)
    trained = Counter({"SERVANT": 5, "ALL": 3, "BOULT": 1, "GOWER": 2, "MIRANDA": 1})
    result = speaker_measure(None, {"tempest": tempest}, trained, s)
    # with memory PROSPERO and MIRANDA hit (PROSPERO, in no training play, is new) and BOULT misses; without,
    # BOULT and GOWER miss (the cut-off PROSPERO line is not counted); SERVANT and ALL are generic either way
    assert result["overall"]["memory"] == {"hits": 4, "names": 6, "share": 4 / 6, "new_hits": 2}
    assert result["overall"]["no_memory"] == {"hits": 0, "names": 4, "share": 0.0, "new_hits": 0}
    assert result["generic_names"] == ["ALL", "SERVANT"]
    assert result["plays"]["tempest"] == result["overall"]
    first = result["prompts"][0]
    assert first["memory"]["written"] == {"PROSPERO": 1, "BOULT": 1, "MIRANDA": 1}
    ends = prompt_ends(tempest, 2, 300)
    assert [(e["start"], e["end"], e["seed"]) for e in result["prompts"]] == [(e - 300, e, 7 + i)
                                                                              for i, e in enumerate(ends)]
    # the same prompt and seed with the model's own memory and with none
    assert calls == [(tempest[e - 300:e], mem_len, 7 + i) for i, e in enumerate(ends) for mem_len in (None, 0)]
    table = speaker_table(result).splitlines()
    assert "| **all plays** | all | 4/6 (66.7%), 2 new | 0/4 (0.0%), 0 new | +66.7 points |" in table
    assert len([line for line in table if line.startswith("| ") and "---" not in line]) == 1 + 2 + 1 + 1


def test_measure_takes_given_prompts_in_place_of_its_cuts(monkeypatch):
    monkeypatch.setattr(speakers, "continue_prompt", lambda checkpoint, prompt, *_: [prompt.decode()])
    text = play("ARIEL", "CALIBAN", "ARIEL", filler=10)
    result = speaker_measure(None, {"tempest": text}, Counter(), SpeakerSettings(), spans={"tempest": [(0, 20)]})
    assert [(e["start"], e["end"]) for e in result["prompts"]] == [(0, 20)]
    assert result["overall"]["memory"] == {"hits": 1, "names": 1, "share": 1.0, "new_hits": 1}  # ARIEL, in 0-20


def test_measure_runs_the_engine_with_fixed_seeds():
    checkpoint = tiny_checkpoint(tiny_config(seq_len=16, mem_len=16))
    text = play(*["ARIEL", "CALIBAN", "SERVANT"] * 10)
    s = SpeakerSettings(prompts=2, prompt_bytes=64, new_tokens=24, samples=2)
    first = speaker_measure(checkpoint, {"tempest": text}, Counter(), s)
    assert first == speaker_measure(checkpoint, {"tempest": text}, Counter(), s)
    assert list(first["overall"]) == list(MODES) and first["settings"]["samples"] == 2
    samples = speakers.continue_prompt(checkpoint, text[:64], None, s, 0)
    assert len(samples) == 2 and samples != speakers.continue_prompt(checkpoint, text[:64], 0, s, 0)


@pytest.mark.parametrize("changes", [{"prompts": 0}, {"samples": 0}, {"phase": 1.0}, {"new_tokens": 2.5}])
def test_bad_settings_are_refused(changes):
    with pytest.raises(XLDemoError, match="speaker"):
        SpeakerSettings(**changes)
