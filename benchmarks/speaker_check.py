"""The speaker-name measure on prompts of this check's own, apart from the eval's: other cut points, lengths, seeds
and samples on the test plays' modern editions, then the four example prompts the app offers. Prints both tables.
python -m benchmarks.speaker_check CHECKPOINT [--threads 1] [--split validation]"""

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.plays import add_options, chosen_plays, use_threads
from xldemo.checkpoint import load_checkpoint
from xldemo.data import train_plays
from xldemo.examples import EXAMPLES, PROMPTS
from xldemo.speakers import SpeakerSettings, speaker_measure, speaker_table, speaking_plays

# unlike the eval's 6 prompts of 1,536 bytes ending mid-way through each sixth of a play, seeds from 0, 8 samples of
# 512 tokens: prompts of eight segments ending a quarter of the way through each eighth, longer continuations
OWN = SpeakerSettings(prompts=8, prompt_bytes=2048, new_tokens=768, samples=6, seed=1000, phase=0.25)
# the example prompts each end on a speaker's name: the continuation opens with a speech, then names the next ones
EXAMPLE_SAMPLES = SpeakerSettings(new_tokens=800, samples=6, seed=2000)


def example_spans(plays: dict[str, bytes]) -> dict[str, list[tuple[int, int]]]:
    """play -> (start, end) in its text of each example prompt taken from it (each is an exact excerpt)."""
    spans = {}
    for name in EXAMPLES.values():
        prompt = (PROMPTS / name).read_bytes()
        play = next(p for p in plays if p.startswith(name.split("_")[0]))
        start = plays[play].index(prompt)
        spans.setdefault(play, []).append((start, start + len(prompt)))
    return spans


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", help="checkpoint folder or Hub repo id")
    add_options(parser)
    args = parser.parse_args()
    began = time.perf_counter()
    use_threads(args)
    plays = chosen_plays(args)
    checkpoint = load_checkpoint(args.checkpoint)
    trained = speaking_plays(train_plays(Path(args.data)))
    print(f"{args.checkpoint}: prompts of this check's own\n")
    print(speaker_table(speaker_measure(checkpoint, plays, trained, OWN, log=progress)))
    if args.split == "test":
        print("The app's four example prompts\n")
        print(speaker_table(speaker_measure(checkpoint, plays, trained, EXAMPLE_SAMPLES, log=progress,
                                            spans=example_spans(plays))))
    print(f"{time.perf_counter() - began:.0f} s, {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
