"""Plays with their characters renamed: training text in which a speaker's name can only be read from context.

A model that has learnt the training plays can write BRUTUS or FALSTAFF from what it remembers of them, and gains
nothing from memory by doing so; continuing a play it has never seen, it writes the names it remembers. In a copy
of a play whose characters all carry made-up names, fresh for every copy, the only way to predict the next speaker's
name is to have read it earlier in the text: what Transformer-XL memory is for.
"""

import random
import re
from collections import Counter

from .speakers import GENERIC_MIN_PLAYS, cast, generic_names, speaker_names

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


def rename(play: bytes, keep: frozenset[str], rng: random.Random, names=made_up_name) -> bytes:
    """play with every word of its cast's names outside keep replaced, in capitals (`PROSPERO.`) and in title case
    (`Prospero's`), by a name that names(rng) draws (made up by default): the same one throughout the play, a
    different one per word."""
    return rename_words(play, name_words(play) - keep, rng, names)


def rename_words(text: bytes, words, rng: random.Random, names=made_up_name) -> bytes:
    """text with each of words (upper case) replaced as rename does: a part of a play is renamed with the words of
    its whole play's cast, names mentioned but not speaking in that part included. names(rng) draws a title-case
    name; it must be able to draw more distinct names than there are words."""
    words = sorted(words)
    if not words:
        return text
    taken, mapping = set(), {}
    for word in words:
        new = names(rng)
        while new in taken:
            new = names(rng)
        taken.add(new)
        mapping[word] = new.upper()
        mapping[word.capitalize()] = new
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(mapping, key=len, reverse=True))) + r")\b")
    # latin-1 maps byte to character one to one, so the text comes back as the same bytes where nothing is renamed
    return pattern.sub(lambda m: mapping[m.group(1)], text.decode("latin-1")).encode("latin-1")


def renamed_copies(plays: dict[str, bytes], copies: int, seed: int) -> list[bytes]:
    """copies renamed versions of every play in plays (a fresh draw of names for each), in a fixed order."""
    keep = generic_words(plays)
    rng = random.Random(seed)
    return [rename(plays[name], keep, rng) for _ in range(copies) for name in sorted(plays)]


CAST_HEADING = "PERSONS REPRESENTED"  # as the modern editions open their casts


class CastSampler:
    """Crops of the training plays renamed afresh for each sample and opened by their cast: the heading, then every
    name that speaks in the crop, one a line, as a play lists its persons. In renamed copies a name's first speech
    cannot be predicted, so training there rewards inventing names (a model fine-tuned on them wrote made-up names for
    34 of 80 speeches); here every name can be read earlier in the sample, and only reading it pays.

    Made-up names all sound alike: a model trained on them alone copied the test plays' names garbled into that sound
    (MIRANDAND) or wrote training plays' names. With real_names, that share of the words is given instead the name of
    a character of another training play (ROMEO in a crop of Hamlet), so that what the model recalls of that name
    misleads and a real-looking name, too, must be copied whole from earlier in the sample."""

    def __init__(self, plays: dict[str, bytes], real_names: float = 0.0):
        keep = generic_words(plays)
        self.plays = [plays[name] for name in sorted(plays)]
        self.words = [name_words(play) - keep for play in self.plays]
        self.real_names = real_names
        everyone = frozenset().union(*self.words)
        self.others = [sorted(everyone - words) for words in self.words]  # sorted: the same draws in every process

    def sample(self, length: int, rng: random.Random) -> bytes:
        """length bytes: a crop of a play drawn by its length, starting at a line, renamed and opened by its cast."""
        index = rng.choices(range(len(self.plays)), weights=[len(play) for play in self.plays])[0]
        play = self.plays[index]
        span = 2 * length  # room for the cast and for made-up names longer than the ones they replace
        start = rng.randrange(max(1, len(play) - span))
        start = play.find(b"\n", start) + 1  # 0 if no line ends after start
        text = rename_words(play[start:start + span], self.words[index], rng, self.drawer(index)).decode("latin-1")
        speakers = dict.fromkeys(speaker_names(text[:length]))  # in order of first speech
        opening = "\n".join([CAST_HEADING, "", *speakers, "", "", ""])
        return (opening + text).encode("latin-1")[:length].ljust(length, b"\n")

    def drawer(self, index: int):
        """How a sample of play index draws a name: made up, or for a share real_names another play's."""
        if not self.real_names:  # no draw of a share at 0: samples stay those made before real names
            return made_up_name
        others = self.others[index]

        def draw(rng: random.Random) -> str:
            return rng.choice(others).capitalize() if rng.random() < self.real_names else made_up_name(rng)
        return draw
