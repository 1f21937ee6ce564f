"""Plays with their characters renamed: training text in which a speaker's name can only be read from context.

A model that has learnt the training plays can write BRUTUS or FALSTAFF from what it remembers of them, and gains
nothing from memory by doing so; continuing a play it has never seen, it writes the names it remembers. In a copy
of a play whose characters all carry made-up names, fresh for every copy, the only way to predict the next speaker's
name is to have read it earlier in the text: what Transformer-XL memory is for.
"""

import random
import re
from collections import Counter

from .speakers import GENERIC_MIN_PLAYS, cast, generic_names

# made-up names are drawn from these syllables: pronounceable, capitalised like the plays' own names
ONSETS = ("b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "br", "cl", "fl", "gr", "st", "tr")
VOWELS = ("a", "e", "i", "o", "u", "ia", "io", "ea")
ENDINGS = ("", "", "", "n", "s", "r", "l", "nd", "ne", "o", "a")
MIN_WORD = 3  # shorter words of a name (of, LA) are kept


def made_up_name(rng: random.Random) -> str:
    """A name of two or three syllables, capitalised: Brenio, Flasta, Mirantel."""
    syllables = rng.randint(2, 3)
    name = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)) + rng.choice(ENDINGS)
    return name.capitalize()


def name_words(play: bytes) -> frozenset[str]:
    """The words of a play's speaker names that are worth renaming, upper case (the cast's, headings left out)."""
    return frozenset(word for name in cast(play) for word in re.findall(r"[A-Z][A-Z']*[A-Z]", name)
                     if len(word) >= MIN_WORD)


def generic_words(plays: dict[str, bytes], min_plays: int = GENERIC_MIN_PLAYS) -> frozenset[str]:
    """Words of speaker names found in min_plays or more plays: roles and titles (SERVANT, LORD, KING), kept."""
    return generic_names(Counter(word for text in plays.values() for word in name_words(text)), min_plays)


def rename(play: bytes, keep: frozenset[str], rng: random.Random) -> bytes:
    """play with every word of its cast's names outside keep replaced, in capitals (`PROSPERO.`) and in title case
    (`Prospero's`), by a made-up name drawn from rng: the same one throughout the play, a different one per word."""
    words = sorted(name_words(play) - keep)
    if not words:
        return play
    taken, mapping = set(), {}
    for word in words:
        new = made_up_name(rng)
        while new in taken:
            new = made_up_name(rng)
        taken.add(new)
        mapping[word] = new.upper()
        mapping[word.capitalize()] = new
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(mapping, key=len, reverse=True))) + r")\b")
    # latin-1 maps byte to character one to one, so the text comes back as the same bytes where nothing is renamed
    return pattern.sub(lambda m: mapping[m.group(1)], play.decode("latin-1")).encode("latin-1")


def renamed_copies(plays: dict[str, bytes], copies: int, seed: int) -> list[bytes]:
    """copies renamed versions of every play in plays (a fresh draw of names for each), in a fixed order."""
    keep = generic_words(plays)
    rng = random.Random(seed)
    return [rename(plays[name], keep, rng) for _ in range(copies) for name in sorted(plays)]
