"""The options and plays that the checks on speakers' names share: the test plays' modern editions (what is
reported) or the validation play (what a model is chosen by)."""

import argparse
from pathlib import Path

import torch

from xldemo.data import DEFAULT_CACHE, MODERN, VALIDATION_PLAY, load_split, prepare, test_texts


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="the test plays (what is reported) or the validation play (what a model is chosen by)")
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
    return {VALIDATION_PLAY + MODERN: load_split(folder, "validation")}
