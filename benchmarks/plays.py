"""The options and plays that the checks on speakers' names share: the test plays' modern editions (what is
reported), the validation play (what a model is chosen by), or the validation play renamed.

Of the validation play's speakers, 16 of 41 also speak in a training play (ANTONY, CAESAR, BRUTUS, PORTIA): a model
may write them from what it learnt of those plays, while the test plays' casts speak in none. Renamed, its
characters carry made-up names, each the same throughout, so that a name from the play can only have been read from
the prompt, as on the test plays; roles that three or more training plays share (CITIZEN, SOLDIER, and LUCIUS) keep
theirs, and speaker_check leaves them uncounted or out of its new hits."""

import argparse
import random
from pathlib import Path

import torch

from xldemo.data import DEFAULT_CACHE, MODERN, VALIDATION_PLAY, load_split, prepare, test_texts, train_plays
from xldemo.rename import generic_words, rename

SPLITS = ("test", "validation", "validation-renamed")
RENAMED = "_renamed"  # the renamed play's key: julius_caesar_renamed_gut.txt


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="the test plays (what is reported), the validation play (what a model is chosen by) or "
                             "the validation play with its characters renamed (made-up names no model can know)")
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
    if args.split == "validation-renamed":
        # a fixed draw of names, role words shared by the training plays (LORD, SERVANT, CITIZEN) kept as training's
        keep = generic_words(train_plays(Path(args.data)))
        return {VALIDATION_PLAY + RENAMED + MODERN: rename(play, keep, random.Random(f"{VALIDATION_PLAY}{RENAMED}"))}
    return {VALIDATION_PLAY + MODERN: play}
