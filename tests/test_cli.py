"""python -m xldemo generate: streaming, the JSON line, exactness, and one-line errors with exit code 2."""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_checkpoint, tiny_config
from xldemo import engine
from xldemo.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from xldemo.cli import build_parser, main
from xldemo.decoders import DECODERS
from xldemo.details import token_record
from xldemo.engine import GenerationSettings
from xldemo.teacher import teacher_forced_logits

ROOT = Path(__file__).resolve().parent.parent
L = 8


@pytest.fixture
def folder(tmp_path):
    checkpoint = tiny_checkpoint(tiny_config(mem_len=5))
    return save_checkpoint(checkpoint.model, checkpoint.config, tmp_path / "ck")


def generate_json(capsys, *args) -> tuple[str, dict]:
    assert main(["generate", *map(str, args), "--json"]) == 0
    out = capsys.readouterr().out
    *streamed, last = out.rstrip("\n").split("\n")
    return "\n".join(streamed), json.loads(last)


def test_json_line_is_exact_and_complete(folder, capsys, monkeypatch):
    prompt = "To be, or not to be"  # 19 bytes: the third segment holds the end of the prompt
    ticks = iter(range(1000))  # the engine's clock, one second a reading
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    streamed, result = generate_json(capsys, "--checkpoint", folder, "--prompt", prompt,
                                     "--max-new-tokens", 3 * L, "--temperature", 0)
    ids = result["token_ids"]
    logits = teacher_forced_logits(tiny_checkpoint(tiny_config(mem_len=5)).model,
                                   torch.tensor([list(prompt.encode()) + ids]))[0]
    assert ids == logits[len(prompt) - 1:-1].argmax(-1).tolist()
    assert result["text"] == bytes(ids).decode("utf-8", errors="replace")
    assert streamed == result["text"]
    assert result["segments"] == [
        {"index": 0, "start": 0, "prompt_tokens": 8, "generated_tokens": 0},
        {"index": 1, "start": 8, "prompt_tokens": 8, "generated_tokens": 0},
        {"index": 2, "start": 16, "prompt_tokens": 3, "generated_tokens": 5},
        {"index": 3, "start": 24, "prompt_tokens": 0, "generated_tokens": 8},
        {"index": 4, "start": 32, "prompt_tokens": 0, "generated_tokens": 8},
        {"index": 5, "start": 40, "prompt_tokens": 0, "generated_tokens": 3},
    ]
    assert result["reason"] == "length" and result["mem_len"] == 5 and result["memory_tokens"] == 5
    # read at the start (0), after the warm-up (1), then once per token (2 for the first, 25 for the 24th)
    assert (result["warmup_s"], result["time_to_first_token_s"], result["decode_tokens_per_s"]) == (1.0, 2.0, 1.0)


def test_details_list_the_first_samples_tokens_with_the_engines_figures(folder, capsys):
    prompt = "To be, or not to be"
    settings = dict(max_new_tokens=2 * L, temperature=1.0, seed=2, num_samples=2)
    _, result = generate_json(capsys, "--checkpoint", folder, "--prompt", prompt, "--max-new-tokens", 2 * L,
                              "--temperature", 1.0, "--seed", 2, "--num-samples", 2, "--details")
    tokens = result["tokens"]
    assert [t["id"] for t in tokens] == result["token_ids"]
    assert [(t["position"], t["segment"]) for t in tokens] == [(p, p // L) for p in range(19, 19 + 2 * L)]
    for t in tokens:
        assert list(t) == ["id", "position", "segment", "logprob", "rank", "top", "memory_share", "attended"]
        assert len(t["top"]) == 5 and len(t["memory_share"]) == 2 and 0 < len(t["attended"]) <= 8
        assert [w for _, w in t["attended"]] == sorted((w for _, w in t["attended"]), reverse=True)
    events = engine.generate(tiny_checkpoint(tiny_config(mem_len=5)), list(prompt.encode()),
                             engine.GenerationSettings(details=True, **settings))
    expected = [token_record(e) for e in events if isinstance(e, engine.Token) and e.sample == 0]
    assert tokens == json.loads(json.dumps(expected))
    assert main(["generate", "--checkpoint", str(folder), "--prompt", prompt, "--details"]) == 2
    assert "--json" in capsys.readouterr().err


def test_prompt_file_is_raw_bytes(folder, tmp_path, capsys):
    raw = b"\xff\xfe not utf-8 \xc3"
    (tmp_path / "p.bin").write_bytes(raw)
    _, result = generate_json(capsys, "--checkpoint", folder, "--prompt-file", tmp_path / "p.bin",
                              "--max-new-tokens", 4, "--seed", 1)
    assert result["prompt_tokens"] == len(raw) and len(result["token_ids"]) == 4


def test_sampling_options_reach_the_engine(folder, capsys):
    args = ("--checkpoint", folder, "--prompt", "abc", "--max-new-tokens", 12, "--temperature", 0.8,
            "--top-k", 20, "--top-p", 0.9, "--min-p", 0.01, "--repetition-penalty", 1.3)
    a = generate_json(capsys, *args, "--seed", 3)[1]
    b = generate_json(capsys, *args, "--seed", 3)[1]
    c = generate_json(capsys, *args, "--seed", 4, "--mem-len", 0, "--num-samples", 2)[1]
    assert a["token_ids"] == b["token_ids"] and a["seed"] == 3
    assert c["mem_len"] == 0 and len(c["samples"]) == 2


def test_stop_and_eos(folder, capsys):
    greedy = generate_json(capsys, "--checkpoint", folder, "--prompt", "abc", "--max-new-tokens", 20,
                           "--temperature", 0)[1]
    eos = greedy["token_ids"][5]
    result = generate_json(capsys, "--checkpoint", folder, "--prompt", "abc", "--max-new-tokens", 20,
                           "--temperature", 0, "--eos", eos)[1]
    assert result["reason"] == "eos" and result["token_ids"][-1] == eos


def bad_folders(tmp_path: Path, good: Path) -> dict[str, Path]:
    folders = {}

    def make(name, config=None, weights=None):
        path = tmp_path / name
        path.mkdir()
        if config is not None:
            (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
        if weights is not None:
            (path / "model.safetensors").write_bytes(weights)
        folders[name] = path

    weights = (good / "model.safetensors").read_bytes()
    config = json.loads((good / "config.json").read_text())
    make("no-config", weights=weights)
    make("malformed-config", "{oops", weights)
    make("corrupt-weights", config, weights[: len(weights) // 2])
    make("rejected-key", {**config, "attn_layers": {**config["attn_layers"], "wings": 2}}, weights)
    make("no-memory", {**config, "max_mem_len": 0}, weights)
    return folders


@pytest.mark.parametrize("case, args, message", [
    ("missing folder", ["--checkpoint", "{tmp}/nowhere", "--prompt", "a"], "no such folder"),
    ("no-config", ["--checkpoint", "{tmp}/no-config", "--prompt", "a"], "no config.json"),
    ("malformed-config", ["--checkpoint", "{tmp}/malformed-config", "--prompt", "a"], "not valid JSON"),
    ("corrupt-weights", ["--checkpoint", "{tmp}/corrupt-weights", "--prompt", "a"], "safetensors"),
    ("rejected-key", ["--checkpoint", "{tmp}/rejected-key", "--prompt", "a"], "wings"),
    ("no-memory", ["--checkpoint", "{tmp}/no-memory", "--prompt", "a"], "max_mem_len"),
    ("empty prompt", ["--checkpoint", "{good}", "--prompt", ""], "empty"),
    ("empty prompt file", ["--checkpoint", "{good}", "--prompt-file", "{tmp}/empty.txt"], "empty"),
    ("missing prompt file", ["--checkpoint", "{good}", "--prompt-file", "{tmp}/none.txt"], "cannot read"),
    ("max-new-tokens 0", ["--checkpoint", "{good}", "--prompt", "a", "--max-new-tokens", "0"], "max_new_tokens"),
    ("negative temperature", ["--checkpoint", "{good}", "--prompt", "a", "--temperature", "-1"], "temperature"),
    ("top-p 0", ["--checkpoint", "{good}", "--prompt", "a", "--top-p", "0"], "top_p"),
    ("top-p 1.5", ["--checkpoint", "{good}", "--prompt", "a", "--top-p", "1.5"], "top_p"),
    ("unknown hub repo offline", ["--checkpoint", "nobody/no-such-model", "--prompt", "a"], "Hugging Face Hub"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(folder, tmp_path, capsys, case, args, message):
    bad_folders(tmp_path, folder)
    (tmp_path / "empty.txt").write_bytes(b"")
    args = [a.format(tmp=tmp_path, good=folder) for a in args]
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("error: ")


@pytest.mark.parametrize("args", [["--max-new-tokens", "many"], ["--top-p"], ["--prompt", "a", "--prompt-file", "b"],
                                  []])
def test_malformed_arguments_exit_2_in_one_line(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *args] if args != [] else ["generate"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def run_cli(*args, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "xldemo", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def test_real_process_streams_then_ends_with_json(folder):
    result = run_cli("generate", "--checkpoint", folder, "--prompt", "hello", "--max-new-tokens", 10,
                     "--temperature", 0, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().split("\n")[-1])["token_ids"]


def test_real_process_reports_bad_input_without_traceback(tmp_path):
    hub = tmp_path / "empty-hub-cache"
    hub.mkdir()
    for args in (["--checkpoint", tmp_path / "nowhere", "--prompt", "a"],
                 ["--checkpoint", "someone/unknown-model", "--prompt", "a"]):
        result = run_cli("generate", *args, env={"HF_HUB_CACHE": str(hub)})
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_dir(), reason="the shipped checkpoint is not in this checkout")
def test_default_checkpoint_is_the_shipped_one(capsys):
    _, result = generate_json(capsys, "--prompt", "ROMEO.\n", "--max-new-tokens", 5, "--temperature", 0)
    assert len(result["token_ids"]) == 5 and result["mem_len"] == 256


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_dir(), reason="the shipped checkpoint is not in this checkout")
def test_greedy_on_the_shipped_checkpoint_is_exact_across_boundaries(capsys, tmp_path):
    """The trained model, fast path and all: 600 greedy tokens after a 700-byte prompt cross three boundaries."""
    prompt = (Path(__file__).resolve().parent.parent / "xldemo" / "prompts" / "macbeth_cast.txt").read_bytes()[:700]
    (tmp_path / "prompt.txt").write_bytes(prompt)
    _, result = generate_json(capsys, "--prompt-file", tmp_path / "prompt.txt", "--max-new-tokens", 600,
                              "--temperature", 0)
    assert result["decoder"] == "fast" and len(result["segments"]) == 6
    ids = result["token_ids"]
    logits = teacher_forced_logits(load_checkpoint(DEFAULT_CHECKPOINT).model, torch.tensor([list(prompt) + ids]))[0]
    assert logits[len(prompt) - 1:-1].argmax(-1).tolist() == ids


def test_every_option_of_every_subcommand_says_what_it_is():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"generate", "train", "eval", "bench", "import"} <= set(commands)
    for name, command in commands.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                words = re.sub(r"\(default: [^)]*\)", "", action.help or "").split()
                assert len(words) >= 2, f"{name} {action.option_strings[0]}: {action.help!r}"
    offered = {a.dest for a in commands["generate"]._actions}
    assert {f.name for f in dataclasses.fields(GenerationSettings)} <= offered
    decoder = next(a for a in commands["generate"]._actions if a.dest == "decoder")
    assert list(decoder.choices) == ["auto", *DECODERS]


@pytest.mark.parametrize("args, message", [
    (["--prompt-file", "{file}", "--bytes", "4096"], "--bytes: not for --prompt-file's memory sweep"),
    (["--prompt-file", "{file}", "--out", "{tmp}/x"], "--out: not for --prompt-file's memory sweep"),
    (["--json"], "--json goes with --prompt-file"),
])
def test_eval_refuses_options_that_its_mode_would_not_read(tmp_path, capsys, args, message):
    (tmp_path / "p.txt").write_text("ALONSO.\\nGood boatswain, have care.\\n" * 4)
    args = [a.format(file=tmp_path / "p.txt", tmp=tmp_path) for a in args]
    assert main(["eval", "--checkpoint", str(tmp_path / "unused"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
