"""Test-set evaluation: against XLAutoregressiveWrapper's loss, segments run alone, and the eval command."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from x_transformers import XLAutoregressiveWrapper

from conftest import tiny_checkpoint, tiny_config
from xldemo import XLDemoError, save_checkpoint
from xldemo.cli import main
from xldemo import data
from xldemo.evaluate import (TABLE_ROWS, evaluate, markdown_report, position_ranges, shown_path, sweep_editions,
                              sweep_report)
from xldemo.speakers import speaker_table
from xldemo.sweep import memory_sweep

TINY = tiny_config(seq_len=16, mem_len=16)
MODES = ("memory", "no_memory")


@pytest.fixture
def net():
    return tiny_checkpoint(TINY).model


@pytest.fixture
def editions():
    g = torch.Generator().manual_seed(1)
    # lengths that end mid-segment and exactly one token into a segment
    return {"a.txt": torch.randint(0, 256, (16 * 5 + 7,), generator=g),
            "b.txt": torch.randint(0, 256, (16 * 3 + 1,), generator=g)}


@pytest.fixture
def result(net, editions):
    return evaluate(net, editions)


@torch.no_grad()
def test_bits_per_byte_are_the_xl_wrapper_loss_with_and_without_memory(net, editions, result):
    wrapper = XLAutoregressiveWrapper(net)
    for name, tokens in editions.items():
        bits = result["editions"][name]
        assert bits["bytes"] == len(tokens)
        assert bits["memory"] == pytest.approx(wrapper(tokens[None]).item() / math.log(2), abs=1e-5)
        assert bits["no_memory"] == pytest.approx(wrapper(tokens[None], dropout_mems=True).item() / math.log(2),
                                                  abs=1e-5)
        assert abs(bits["memory"] - bits["no_memory"]) > 1e-4  # else the two checks above could not tell them apart
    predicted = {name: len(tokens) - 1 for name, tokens in editions.items()}
    for mode in MODES:
        expected = sum(result["editions"][name][mode] * n for name, n in predicted.items()) / sum(predicted.values())
        assert result["overall"][mode] == pytest.approx(expected, abs=1e-6)


@torch.no_grad()
def test_by_position_without_memory_is_each_segment_run_alone(net, editions, result):
    seq_len = TINY["max_seq_len"]
    sums, counts = torch.zeros(seq_len, dtype=torch.float64), torch.zeros(seq_len, dtype=torch.long)
    for tokens in editions.values():
        for start in range(0, len(tokens) - 1, seq_len):
            targets = tokens[start + 1:start + seq_len + 1]
            inputs = tokens[start:start + len(targets)]
            nats = F.cross_entropy(net(inputs[None])[0], targets, reduction="none")
            sums[:len(targets)] += nats.double() / math.log(2)
            counts[:len(targets)] += 1
    assert result["position_counts"] == counts.tolist()
    assert result["by_position"]["no_memory"] == pytest.approx((sums / counts).tolist(), abs=1e-5)


def test_by_position_averages_back_to_overall(result):
    counts = result["position_counts"]
    for mode in MODES:
        weighted = sum(b * c for b, c in zip(result["by_position"][mode], counts)) / sum(counts)
        assert weighted == pytest.approx(result["overall"][mode], abs=1e-9)
    # memory changes nothing for the first segment only, so the curves must differ somewhere
    assert result["by_position"]["memory"] != pytest.approx(result["by_position"]["no_memory"], abs=1e-5)


def test_position_ranges_span_the_segment_weighted_by_counts(result):
    seq_len = result["max_seq_len"]
    (first, last, whole), = position_ranges(result, rows=1)
    assert (first, last) == (0, seq_len - 1)
    singles = position_ranges(result, rows=seq_len)
    assert [(f, l) for f, l, _ in singles] == [(p, p) for p in range(seq_len)]
    for mode in MODES:
        assert whole[mode] == pytest.approx(result["overall"][mode], abs=1e-9)
        assert [bits[mode] for _, _, bits in singles] == pytest.approx(result["by_position"][mode], abs=1e-12)
    ranges = position_ranges(result, rows=3)
    assert [(f, l) for f, l, _ in ranges] == [(0, 4), (5, 10), (11, 15)]


def test_markdown_report_has_a_row_per_edition_all_and_position_range(result):
    lines = markdown_report(result).splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| edition", "| position"))]
    assert len(rows) == len(result["editions"]) + 1 + TABLE_ROWS
    overall = result["overall"]
    assert f"| **all** | {16 * 5 + 7 + 16 * 3 + 1} | {overall['memory']:.4f} | {overall['no_memory']:.4f} |" in lines[6]


def test_evaluate_refuses_editions_within_one_segment(net, editions):
    with pytest.raises(XLDemoError, match="short.txt: 16 tokens"):
        evaluate(net, {**editions, "short.txt": torch.zeros(16, dtype=torch.long)})
    with pytest.raises(XLDemoError, match="no test editions"):
        evaluate(net, {})


def test_sweep_over_editions_weights_each_by_the_tokens_it_predicts(net, editions, result):
    sweep = sweep_editions(net, editions, (0, 8, 16, 48))
    assert sweep["mem_lens"] == [0, 8, 16, 48] and sweep["trained_mem_len"] == 16
    for name, tokens in editions.items():
        points = memory_sweep(net, tokens, (0, 8, 16, 48))["points"]
        assert sweep["editions"][name] == [p["bits_per_token"] for p in points]
    # no memory and the trained memory are the two columns of the bits-per-byte table
    for mode, index in (("no_memory", 0), ("memory", 2)):
        assert sweep["overall"][index] == pytest.approx(result["overall"][mode], abs=1e-5)
        for name in editions:
            assert sweep["editions"][name][index] == pytest.approx(result["editions"][name][mode], abs=1e-5)
    lines = sweep_report(sweep).splitlines()
    assert lines[2] == "| memory | a.txt | b.txt | all | gain over no memory (all) |"
    assert lines[6].startswith("| 16 (trained) |") and lines[6].endswith(
        f"| {sweep['overall'][2]:.4f} | {sweep['overall'][0] - sweep['overall'][2]:+.4f} |")


@pytest.fixture
def saved(tmp_path, net):
    return save_checkpoint(net, TINY, tmp_path / "tiny")


def test_eval_command_writes_tables_and_plot_for_every_test_edition(saved, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(saved), "--bytes", "100", "--out", str(out), "--mem-lens", "0,16,64",
                 "--speaker-prompts", "2", "--speaker-bytes", "300", "--speaker-new-tokens", "48",
                 "--speaker-samples", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    assert sorted(result["editions"]) == sorted(data.test_texts(data.prepare(data.DEFAULT_CACHE)))
    for bits in [*result["editions"].values(), result["overall"]]:
        assert all(math.isfinite(bits[mode]) and bits[mode] > 0 for mode in MODES)
    assert all(bits["bytes"] == 100 for bits in result["editions"].values())
    report = "\n".join([markdown_report(result), sweep_report(result["memory_sweep"]),
                        speaker_table(result["speakers"])])
    assert (out / "eval.md").read_text() == report and report in printed
    assert result["memory_sweep"]["mem_lens"] == [0, 16, 64]
    assert sorted(result["memory_sweep"]["editions"]) == sorted(result["editions"])
    speakers = result["speakers"]
    assert list(speakers["plays"]) == ["macbeth_gut.txt", "tempest_gut.txt"]  # the modern editions: the folio
    assert [e["play"] for e in speakers["prompts"]] == ["macbeth_gut.txt"] * 2 + ["tempest_gut.txt"] * 2  # form differs
    assert speakers["settings"]["prompt_bytes"] == 300 and speakers["settings"]["samples"] == 2
    assert "SERVANT" in speakers["generic_names"] and "PROSPERO" not in speakers["generic_names"]
    assert (out / "eval.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("options, message", [
    (["--bytes", "16"], "--bytes must be more than the checkpoint's max_seq_len (16)"),
    (["--checkpoint", "no/such/folder"], "no such folder"),
    (["--out", "FILE/eval"], "cannot make that folder"),
    (["--speaker-prompts", "-1"], "--speaker-prompts must be 0"),
    (["--speaker-samples", "0"], "speaker samples must be an integer >= 1"),
    (["--mem-lens", "0,x"], "memory lengths must be comma-separated"),
])
def test_eval_command_reports_bad_input_in_one_line(saved, tmp_path, capsys, options, message):
    (tmp_path / "FILE").write_text("a file, not a folder")
    options = [str(tmp_path / o) if o.startswith("FILE") else o for o in options]
    assert main(["eval", "--checkpoint", str(saved), "--out", str(tmp_path / "eval"), *options]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_eval_json_names_a_checkpoint_under_the_working_folder_relatively(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(saved), "--bytes", "100", "--out", "eval", "--quick"]) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["memory_sweep"]["mem_lens"] == [0, 16] and result["speakers"]["settings"]["new_tokens"] == 64
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["checkpoint"] == "tiny"
    assert shown_path("/elsewhere/model") == "/elsewhere/model"
