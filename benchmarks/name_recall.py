"""Name recall: what a speaker's name costs the model to predict, with memory and without, in the test plays as they
are and with their characters renamed (made-up names no model can know, so every bit saved on them is read from
context). Teacher-forced, plain x-transformers passes, the first 24 KB of each test play's modern edition.
python -m benchmarks.name_recall CHECKPOINT [CHECKPOINT ...] [--threads 1] [--split validation]"""

import argparse
import random
import time
from pathlib import Path

import torch

from benchmarks.plays import add_options, chosen_plays, use_threads
from xldemo.checkpoint import load_checkpoint
from xldemo.data import MODERN, train_plays
from xldemo.rename import generic_words, rename
from xldemo.speakers import speaker_lines
from xldemo.teacher import bits_per_token

SCORED_BYTES = 24 * 1024  # as the eval's bits-per-byte tables
RENAME_SEED = 2026


def name_bytes(text: bytes) -> torch.Tensor:
    """(len(text),) True at each byte of a speaker's name after its first letter: the part a model that has read
    the name before can copy, where the first letter says which name it is."""
    mask = torch.zeros(len(text), dtype=torch.bool)
    for offset, name in speaker_lines(text.decode("latin-1")):
        mask[offset + 1:offset + len(name)] = True
    return mask


def name_bits(net, text: bytes) -> dict[str, float]:
    """Mean bits per name byte (as name_bytes marks them) with the model's memory and with none."""
    tokens = torch.tensor([list(text)])
    names = name_bytes(text)[1:]  # bits[j] is the cost of byte j + 1
    return {mode: bits_per_token(net, tokens, memory=memory)[0][names].mean().item()
            for mode, memory in (("memory", True), ("no_memory", False))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders or Hub repo ids")
    add_options(parser)
    args = parser.parse_args()
    began = time.perf_counter()
    use_threads(args)
    plays = chosen_plays(args)
    keep = generic_words(train_plays(Path(args.data)))  # roles (SERVANT, LORD) keep their names, as in training
    texts = {(play, version): text[:SCORED_BYTES] for play, original in plays.items()
             for version, text in (("as written", original),
                                   ("renamed", rename(original, keep, random.Random(RENAME_SEED))))}
    print("| checkpoint | play | names | with memory | without memory | saved by memory |")
    print("|---|---|---|---:|---:|---:|")
    with torch.inference_mode():
        for source in args.checkpoints:
            net = load_checkpoint(source).model
            for (play, version), text in texts.items():
                bits = name_bits(net, text)
                print(f"| {source} | {play.removesuffix(MODERN)} | {version} | {bits['memory']:.3f} | "
                      f"{bits['no_memory']:.3f} | {bits['no_memory'] - bits['memory']:+.3f} |", flush=True)
    print(f"\nbits per byte of speakers' names after their first letter; {time.perf_counter() - began:.0f} s, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
