"""The command line: python -m xldemo {generate,train,eval,bench,import,average}."""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .errors import XLDemoError
from .options import add_options, from_options, number_list


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def cmd_generate(args) -> None:
    import torch

    from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from .details import token_record
    from .engine import Finished, GenerationSettings, Started, Token, generate, segment_table

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = from_options(GenerationSettings, args)
    if settings.details and not args.json:
        raise XLDemoError("--details adds per-token figures to the --json line: give --json too")
    checkpoint = load_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT, revision=args.revision)
    prompt = args.prompt if args.prompt_file is None else read_prompt_file(args.prompt_file)
    prompt_ids = checkpoint.tokenizer.encode(prompt)
    streamed = []  # the first sample's tokens, for --details
    for event in generate(checkpoint, prompt_ids, settings):
        if isinstance(event, Started):
            started = event
        elif isinstance(event, Token) and event.sample == 0:
            sys.stdout.write(event.text)
            sys.stdout.flush()
            streamed.append(event)
        elif isinstance(event, Finished):
            finished = event
    sys.stdout.write("\n")
    if args.json:
        total = len(prompt_ids) + len(finished.token_ids[0])
        print(json.dumps({
            "token_ids": list(finished.token_ids[0]),
            "text": finished.texts[0],
            "reason": finished.reason,
            "segments": segment_table(len(prompt_ids), total, started.segment_len),
            "warmup_s": finished.warmup_s,
            "time_to_first_token_s": finished.time_to_first_token_s,
            "decode_tokens_per_s": finished.decode_tokens_per_s,
            "prompt_tokens": len(prompt_ids),
            "memory_tokens": finished.memory_tokens,
            "mem_len": started.mem_len,
            "seed": started.seed,
            "decoder": started.decoder,
            "samples": [{"token_ids": list(ids), "text": text, "reason": reason}
                        for ids, text, reason in zip(finished.token_ids, finished.texts, finished.reasons)],
            **({"tokens": [token_record(t) for t in streamed]} if settings.details else {}),
        }))


def read_prompt_file(path: str) -> bytes:
    """The file's raw bytes: byte tokens take every byte as it is; the other tokenizers read them as UTF-8 text."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise XLDemoError(f"--prompt-file: cannot read {path!r} ({e.strerror})") from None


def cmd_train(args) -> None:
    from .train import TrainSettings, train

    print(train(from_options(TrainSettings, args)))


def cmd_eval(args) -> None:
    from .evaluate import EvalSettings, run_eval

    settings = from_options(EvalSettings, args)
    if args.prompt_file is not None:
        # the sweep reads the checkpoint and the memory lengths alone: any other option given would pass unheard
        given = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(EvalSettings)
                 if f.name not in ("checkpoint", "mem_lens") and getattr(settings, f.name) != f.default]
        if given:
            raise XLDemoError(f"{', '.join(given)}: not for --prompt-file's memory sweep, which reads only "
                              "--checkpoint and --mem-lens")
        return cmd_sweep(args)
    if args.json:
        raise XLDemoError("--json goes with --prompt-file: the test-set evaluation writes eval.json to --out")
    print(run_eval(settings), end="")
    print(f"wrote eval.json, eval.md and eval.png to {args.out}")


def cmd_sweep(args) -> None:
    from .checkpoint import load_checkpoint
    from .evaluate import shown_path
    from .sweep import memory_sweep, sweep_table
    from .tokenizer import BYTES

    checkpoint = load_checkpoint(args.checkpoint)
    prompt = read_prompt_file(args.prompt_file)
    result = memory_sweep(checkpoint.model, checkpoint.tokenizer.encode(prompt), args.mem_lens)
    print(sweep_table(result, "byte" if checkpoint.tokenizer.name == BYTES else "token"), end="")
    if args.json:
        print(json.dumps({"checkpoint": shown_path(args.checkpoint), **result}))


def cmd_bench(args) -> None:
    from .bench import BenchSettings, format_table, run_bench

    rows, about = run_bench(from_options(BenchSettings, args), log=lambda line: print(line, file=sys.stderr))
    print(format_table(rows, about))


def cmd_import(args) -> None:
    from .importer import ImportSettings, import_checkpoint

    print(import_checkpoint(args.source, from_options(ImportSettings, args)))


def cmd_average(args) -> None:
    from .checkpoint import average_checkpoints

    weights = None if args.weights is None else parse_weights(args.weights)
    print(average_checkpoints(args.sources, args.out, weights))


def parse_weights(text: str) -> list[float]:
    try:
        return number_list(text, float)
    except ValueError:
        raise XLDemoError(f"--weights: comma-separated numbers, got {text!r}") from None


def build_parser() -> Parser:
    from .bench import BenchSettings
    from .engine import GenerationSettings
    from .evaluate import EvalSettings
    from .importer import ImportSettings
    from .train import TrainSettings

    parser = Parser(prog="python -m xldemo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    gen = commands.add_parser("generate", help="stream a continuation of a prompt")
    gen.add_argument("--checkpoint", help="local folder or Hugging Face Hub repo id (default: the shipped model)")
    gen.add_argument("--revision", help="Hub branch, tag or commit")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (UTF-8)")
    prompt.add_argument("--prompt-file", help="prompt file: raw bytes for a byte-level model, else UTF-8 text")
    add_options(gen, GenerationSettings)
    gen.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    gen.add_argument("--json", action="store_true", help="end with one line of JSON: ids, text, segments, timings")
    gen.set_defaults(run=cmd_generate)

    train = commands.add_parser("train", help="train a model with XLAutoregressiveWrapper.forward")
    add_options(train, TrainSettings)
    train.set_defaults(run=cmd_train)
    evaluate = commands.add_parser("eval", help="bits per byte on the held-out plays, with memory and without, a "
                                                "memory-length sweep and the speaker-name measure; with --prompt-file, "
                                                "a memory-length sweep on that text instead")
    add_options(evaluate, EvalSettings)
    evaluate.add_argument("--prompt-file", help="sweep memory lengths on this text (read as generate reads it) "
                                                "instead of evaluating on the held-out plays")
    evaluate.add_argument("--json", action="store_true", help="after the sweep's table, one line of JSON: its points")
    evaluate.set_defaults(run=cmd_eval)
    bench = commands.add_parser("bench", help="xldemo against XLAutoregressiveWrapper.generate, side by side")
    add_options(bench, BenchSettings)
    bench.set_defaults(run=cmd_bench)
    imports = commands.add_parser("import", help="make a checkpoint folder of a model trained elsewhere")
    imports.add_argument("source", metavar="SOURCE",
                         help="a torch.save file (a state dict, or a dict holding one under model, state_dict or "
                              "model_state_dict), a .safetensors file, or a folder accelerate saved")
    add_options(imports, ImportSettings)
    imports.set_defaults(run=cmd_import)
    average = commands.add_parser("average", help="a checkpoint whose weights are the mean of checkpoints of one "
                                                  "shape (a model and its fine-tunings)")
    average.add_argument("sources", metavar="CHECKPOINT", nargs="+", help="folders or Hub repo ids, two or more")
    average.add_argument("--weights", help="comma-separated, one per checkpoint (default: equal), scaled to sum to 1")
    average.add_argument("--out", required=True, help="folder to write, new or empty")
    average.set_defaults(run=cmd_average)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except XLDemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
