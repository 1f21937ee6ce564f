"""Renamed plays: every character's name replaced consistently, nothing else touched, fresh names per copy."""

import random
import re

from xldemo.rename import CAST_HEADING, CastSampler, generic_words, made_up_name, name_words, rename, renamed_copies
from xldemo.speakers import speaker_names

PLAY = b"""ACT I. SCENE I. An island.

[Enter PROSPERO and MIRANDA.]

PROSPERO.
Miranda, my daughter, hear me: Prospero's books are all I have.

MIRANDA.
Sir, I hear. The First Lord comes.

FIRST LORD.
Good morrow, Prospero.

LADY MACBETH.
Out, damned spot! Macbeth, to bed.

PROSPERO.
Lady, be calm.
"""


def test_every_name_is_replaced_the_same_way_throughout_and_nothing_else_changes():
    keep = frozenset({"FIRST", "LORD", "LADY"})
    renamed = rename(PLAY, keep, random.Random(3)).decode("latin-1")
    before, after = speaker_names(PLAY.decode("latin-1")), speaker_names(renamed)
    assert len(before) == len(after)
    mapping = {}
    for old, new in zip(before, after):
        assert mapping.setdefault(old, new) == new  # one new name per old one, wherever it speaks
    assert mapping["FIRST LORD"] == "FIRST LORD" and mapping["LADY MACBETH"].startswith("LADY ")
    renamed_words = {old: new for name, new_name in mapping.items()
                     for old, new in zip(name.split(), new_name.split()) if old not in keep}
    assert set(renamed_words) == {"PROSPERO", "MIRANDA", "MACBETH"}
    assert len(set(renamed_words.values())) == 3 and not set(renamed_words.values()) & set(renamed_words)
    # undoing the replacement, capitals and title case alike, gives the play back byte for byte
    undo = {**{new: old for old, new in renamed_words.items()},
            **{new.capitalize(): old.capitalize() for old, new in renamed_words.items()}}
    restored = re.sub(r"\b(" + "|".join(undo) + r")\b", lambda m: undo[m.group(1)], renamed)
    assert restored.encode("latin-1") == PLAY
    assert "Prospero" not in renamed and "Miranda" not in renamed and "Lady, be calm" in renamed


def test_names_are_drawn_afresh_for_each_copy_and_the_copies_depend_only_on_the_seed():
    plays = {"a.txt": PLAY, "b.txt": PLAY.replace(b"PROSPERO", b"ANTONIO").replace(b"Prospero", b"Antonio")}
    copies = renamed_copies(plays, 2, seed=5)
    assert len(copies) == 4 and len(set(copies)) == 4  # two plays, two copies, all different
    assert copies == renamed_copies(plays, 2, seed=5) and copies != renamed_copies(plays, 2, seed=6)
    # MIRANDA speaks in both plays: too few for a role, so renamed, differently in each
    assert len({speaker_names(c.decode("latin-1"))[1] for c in copies}) == 4


def test_words_of_names_in_enough_plays_are_roles_and_kept():
    plays = {f"{i}.txt": f"FIRST LORD.\nHail.\n\nHERO{'X' * i}.\nHo.\n".encode() for i in range(3)}
    assert generic_words(plays) == {"FIRST", "LORD"}
    assert generic_words(plays, min_plays=4) == frozenset()
    assert name_words(plays["2.txt"]) == {"FIRST", "LORD", "HEROXX"}


def test_made_up_names_are_capitalised_words_of_two_or_three_syllables():
    rng = random.Random(0)
    names = [made_up_name(rng) for _ in range(200)]
    assert all(re.fullmatch(r"[A-Z][a-z]{3,}", name) for name in names)
    assert len(set(names)) > 190


def test_cast_samples_open_with_every_speaker_they_hold_and_carry_made_up_names_only():
    plays = {"tempest.txt": PLAY * 6, "other.txt": PLAY.replace(b"PROSPERO", b"ANTONIO").replace(b"Prospero",
                                                                                          b"Antonio") * 6}
    sampler, rng = CastSampler(plays), random.Random(7)
    samples = [sampler.sample(300, rng).decode("latin-1") for _ in range(40)]
    assert {len(s) for s in samples} == {300}
    real = {"PROSPERO", "MIRANDA", "MACBETH", "ANTONIO", "Prospero", "Miranda", "Macbeth", "Antonio"}
    drawn = set()
    for sample in samples:
        heading, rest = sample.split("\n\n", 1)
        cast, body = rest.split("\n\n\n", 1)
        # in the order they first speak; the cast may go on with names whose speeches the sample's end cut off
        speakers = list(dict.fromkeys(speaker_names(body)))
        assert heading == CAST_HEADING and speakers and cast.split("\n")[:len(speakers)] == speakers
        assert not real & set(re.findall(r"[A-Za-z]+", sample))  # renamed wherever they stand, speaking or not
        assert "FIRST LORD" in cast.split("\n") or "FIRST LORD" not in body  # roles kept, and listed when they speak
        drawn |= {name for name in cast.split("\n") if name != "FIRST LORD"}
    assert len(drawn) > 60  # fresh names for every sample, not one draw per play
    again = CastSampler(plays)
    assert [again.sample(300, random.Random(7)) for _ in range(2)] == [sampler.sample(300, random.Random(7))] * 2


def test_real_names_are_other_plays_characters_in_their_share_and_never_the_crops_own():
    casts = {"a": ("ALPHA", "BETA"), "b": ("GAMMA", "DELTA"), "c": ("EPSILON", "ZETA")}
    plays = {f"{play}.txt": "".join(f"{name}.\nIn play {play}.\n\n" for name in names).encode() * 40
             for play, names in casts.items()}
    everyone = {name for names in casts.values() for name in names}
    # at 0 no share is drawn: the samples are those of a sampler without real names
    assert CastSampler(plays, 0.0).sample(300, random.Random(2)) == CastSampler(plays).sample(300, random.Random(2))
    for share in (1.0, 0.5):
        sampler, rng = CastSampler(plays, share), random.Random(11)
        real = made_up = 0
        for _ in range(100):
            sample = sampler.sample(300, rng).decode("latin-1")
            play = re.search(r"In play (\w)", sample).group(1)
            for name in set(speaker_names(sample)):
                assert name not in casts[play]  # never the crop's own names
                real += name in everyone
                made_up += name not in everyone
        if share == 1.0:
            assert made_up == 0 and real
        else:
            assert 0.35 < real / (real + made_up) < 0.65
