"""The options and plays that the checks on speakers' names share: the test plays' modern editions (what is
reported), the validation play (what a model is chosen by), or the validation play renamed.

Of the validation play's speakers, 16 of 41 also speak in a training play (ANTONY, CAESAR, BRUTUS, PORTIA): a model
may write them from what it learnt of those plays, while the test plays' casts speak in none. Renamed, its
characters carry made-up names, each the same throughout, so that a name from the play can only have been read from
the prompt, as on the test plays; roles that three or more training plays share (CITIZEN, SOLDIER, and LUCIUS) keep
theirs, and speaker_check leaves them uncounted or out of its new hits.

Made-up names share a sound that a model trained on cast samples learns: it copied them well on the renamed play and
then garbled the test plays' names into that sound. The unseen split renames the play with names of characters of
other playwrights' plays instead (Marlowe's, Kyd's, Jonson's, Webster's, Middleton's), real-looking and, like the test
plays' names, words that no training text holds."""

import argparse
import random
import re
from pathlib import Path

import torch

from xldemo.data import (DEFAULT_CACHE, MODERN, VALIDATION_PLAY, load_split, prepare, test_texts, train_plays,
                         training_text)
from xldemo.errors import XLDemoError
from xldemo.rename import generic_words, rename

SPLITS = ("test", "validation", "validation-renamed", "validation-unseen")
RENAMED, UNSEEN = "_renamed", "_unseen"  # the renamed plays' keys: julius_caesar_renamed_gut.txt
# characters of other playwrights' plays, ordinary English words (Subtle, Surly, Face) left out; unseen_names keeps
# those that no training text holds as a word
OTHER_PLAYWRIGHTS = (
    "Faustus", "Mephostophilis", "Valdes", "Tamburlaine", "Zenocrate", "Mycetes", "Cosroe", "Bajazeth", "Zabina",
    "Theridamas", "Techelles", "Usumcasane", "Barabas", "Ithamore", "Ferneze", "Lodowick", "Bellamira", "Gaveston",
    "Baldock", "Volpone", "Mosca", "Corvino", "Corbaccio", "Voltore", "Bonario", "Ananias", "Drugger", "Kastril",
    "Lovewit", "Bosola", "Delio", "Cariola", "Vittoria", "Brachiano", "Flamineo", "Zanche", "Monticelso", "Hieronimo",
    "Bellimperia", "Pedringano", "Serberine", "Vindice", "Lussurioso", "Spurio", "Ambitioso", "Supervacuo",
    "Gratiana", "Castiza", "Dondolo", "Alsemero", "Jasperino", "Diaphanta", "Alibius", "Lollio", "Franciscus",
    "Tomazo", "Vermandero", "Quomodo", "Witgood", "Tharsalio", "Eudora", "Montsurry", "Tamyra", "Epicoene", "Truewit",
    "Dauphine", "Clerimont", "Overdo", "Littlewit", "Quarlous", "Winwife", "Zenobia", "Olympia", "Calyphas",
    "Amyras", "Orcanes", "Sigismund", "Frederick", "Gazellus", "Almeda", "Perdicas", "Callapine", "Agydas",
)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="the test plays (what is reported), the validation play (what a model is chosen by), or "
                             "the validation play with its characters renamed: made-up names (validation-renamed) or "
                             "other playwrights' characters' names that no training text holds (validation-unseen)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--data", default=str(DEFAULT_CACHE), help="data cache folder")


def use_threads(args: argparse.Namespace) -> None:
    """torch's threads as --threads asks (0: torch's choice)."""
    if args.threads:
        torch.set_num_threads(args.threads)


def chosen_plays(args: argparse.Namespace) -> dict[str, bytes]:
    """file name -> text of the plays args.split names."""
    folder = prepare(Path(args.data))
    if args.split == "test":
        return {name: text for name, text in test_texts(folder).items() if name.endswith(MODERN)}
    play = load_split(folder, "validation")
    if args.split == "validation":
        return {VALIDATION_PLAY + MODERN: play}
    # a fixed draw of names, role words shared by the training plays (LORD, SERVANT, CITIZEN) kept as training's
    keep = generic_words(train_plays(Path(args.data)))
    if args.split == "validation-renamed":
        return {VALIDATION_PLAY + RENAMED + MODERN: rename(play, keep, random.Random(f"{VALIDATION_PLAY}{RENAMED}"))}
    pool = unseen_names(training_text(folder, folio=True))
    rng = random.Random(f"{VALIDATION_PLAY}{UNSEEN}")
    return {VALIDATION_PLAY + UNSEEN + MODERN: rename(play, keep, rng, names=lambda r: r.choice(pool))}


def unseen_names(text: bytes) -> list[str]:
    """The names of OTHER_PLAYWRIGHTS that text holds as a word in neither title case nor capitals."""
    words = set(re.findall(rb"[A-Za-z]+", text))  # Tamburlaine's holds Tamburlaine
    pool = [name for name in OTHER_PLAYWRIGHTS if name.encode() not in words and name.upper().encode() not in words]
    if len(pool) < 50:  # more than the validation play's renamed words, or rename could not draw them apart
        raise XLDemoError(f"only {len(pool)} of the other playwrights' names are unseen in the training text")
    return pool
