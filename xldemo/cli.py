"""The command line: python -m xldemo {generate,train,eval,bench}."""

import argparse
import dataclasses
import sys

from .errors import XLDemoError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_dataclass_options(parser: argparse.ArgumentParser, cls) -> None:
    """One --option per field of a settings dataclass, typed and defaulted from it."""
    for field in dataclasses.fields(cls):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default,
                            help=f"default: {field.default}")


def from_options(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def cmd_train(args) -> None:
    from .train import TrainSettings, train

    print(train(from_options(TrainSettings, args)))


def cmd_eval(args) -> None:
    from .evaluate import EvalSettings, run_eval

    print(run_eval(from_options(EvalSettings, args)), end="")
    print(f"wrote eval.json, eval.md and eval.png to {args.out}")


def build_parser() -> Parser:
    from .evaluate import EvalSettings
    from .train import TrainSettings

    parser = Parser(prog="python -m xldemo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = commands.add_parser("train", help="train a model with XLAutoregressiveWrapper.forward")
    add_dataclass_options(train, TrainSettings)
    train.set_defaults(run=cmd_train)
    evaluate = commands.add_parser("eval", help="bits per byte on the held-out plays, with memory and without")
    add_dataclass_options(evaluate, EvalSettings)
    evaluate.set_defaults(run=cmd_eval)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except XLDemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
