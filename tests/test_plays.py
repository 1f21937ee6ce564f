"""The validation plays the speaker checks choose models by: renamed so that a name can only be read, not recalled."""

import argparse
import re

import pytest

from benchmarks.plays import OTHER_PLAYWRIGHTS, chosen_plays, unseen_names
from xldemo import XLDemoError
from xldemo.data import DEFAULT_CACHE, load_split, prepare, training_text
from xldemo.speakers import speaker_names


def test_unseen_names_are_the_other_playwrights_names_the_text_never_holds_as_a_word():
    pool = unseen_names(b"VOLPONE.\nHo, Mosca! Faustusian and Tamburlaine's.\n")
    assert "Volpone" not in pool and "Mosca" not in pool and "Tamburlaine" not in pool  # capitals, title case, 's
    assert "Faustus" in pool and len(pool) == len(OTHER_PLAYWRIGHTS) - 3  # a longer word is not the name
    with pytest.raises(XLDemoError, match="only 0 of the other playwrights' names are unseen"):
        unseen_names(" ".join(OTHER_PLAYWRIGHTS).encode())


def test_the_unseen_split_is_the_validation_play_renamed_by_one_fixed_draw_of_names_no_training_text_holds():
    args = argparse.Namespace(split="validation-unseen", data=str(DEFAULT_CACHE))
    (key, play), = chosen_plays(args).items()
    assert key == "julius_caesar_unseen_gut.txt" and chosen_plays(args) == {key: play}
    folder = prepare(DEFAULT_CACHE)
    original = load_split(folder, "validation").decode("latin-1")
    before, after = speaker_names(original), speaker_names(play.decode("latin-1"))
    assert len(before) == len(after)
    training = set(re.findall(rb"[A-Za-z]+", training_text(folder, folio=True)))
    pool = {name.upper() for name in OTHER_PLAYWRIGHTS}
    renamed = {new for old, new in zip(before, after) if old != new}
    assert {"BRUTUS", "CASSIUS", "PORTIA"} <= set(before) - set(after)  # every character, known ones included
    words = {word for name in renamed for word in name.split()} & pool
    assert len(words) >= 25 and not {word.encode() for word in words} & training
    assert set(after) - set(before) <= renamed
