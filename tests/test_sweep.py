"""The memory-length sweep against x-transformers' own memory handling, and its command line."""

import json

import pytest
import torch

from conftest import tiny_checkpoint, tiny_config
from xldemo.checkpoint import build_model, save_checkpoint
from xldemo.cli import main
from xldemo.errors import XLDemoError
from xldemo.sweep import check_mem_lens, memory_sweep, segment_bits, sweep_table
from xldemo.teacher import bits_per_token

L = 8
CONFIGS = {
    "rotary": tiny_config(),
    "absolute positions": tiny_config(rotary=False),
    "t5 rel_pos_bias": tiny_config(rel_pos_bias=True),
    "shift_mem_down": {**tiny_config(depth=3, mem_len=13), "shift_mem_down": 1},
}


def ids(length, seed=1):
    return torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(seed))


def built_with(checkpoint, mem_len):
    """The same weights in a model whose own max_mem_len is mem_len: x-transformers then builds that memory itself."""
    net = build_model({**checkpoint.config, "max_mem_len": mem_len}).eval()
    net.load_state_dict(checkpoint.model.state_dict())
    return net


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("mem_len", [0, 3, L, 20, 64])
def test_bits_equal_a_model_built_with_that_memory_length(name, mem_len):
    checkpoint = tiny_checkpoint(CONFIGS[name])
    tokens = ids(5 * L + 3)
    ours = segment_bits(checkpoint.model, tokens, mem_len)
    reference = bits_per_token(built_with(checkpoint, max(mem_len, 1)), tokens[None], memory=mem_len > 0)[0]
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def test_memory_length_matters_up_to_what_the_text_fills():
    """Guards the test above from passing on a sweep whose lengths change nothing."""
    net = tiny_checkpoint().model
    result = memory_sweep(net, ids(3 * L + 1).tolist(), [0, 4, 2 * L, 3 * L, 100])
    bits = [p["bits_per_token"] for p in result["points"]]
    assert len(set(bits[:3])) == 3  # 0, 4 and 2L differ
    assert bits[2] == bits[3] == bits[4]  # the last segment starts at 2L: no more memory to fill
    assert result["longest_useful_mem_len"] == 2 * L
    assert (result["tokens"], result["max_seq_len"], result["trained_mem_len"]) == (3 * L + 1, L, L)


def test_table_marks_the_trained_length_and_beyond():
    result = memory_sweep(tiny_checkpoint().model, ids(4 * L).tolist(), [0, L, 2 * L, 100])
    table = sweep_table(result, "byte")
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", f"| {L}", f"| {2 * L}", "| 100"]
    assert "trained length" in rows[1] and "beyond the trained length" in rows[2]
    assert "more than the text fills" in rows[3] and "bits per byte" in table
    assert rows[0].split(" | ")[2] == "+0.0000"


@pytest.mark.parametrize("mem_lens", ["", "1,x", [-1], [2.5], [True], "0,,"])
def test_bad_memory_lengths_are_refused(mem_lens):
    if mem_lens == "0,,":
        assert check_mem_lens(mem_lens) == (0,)
        return
    with pytest.raises(XLDemoError, match="memory lengths"):
        check_mem_lens(mem_lens)


def test_eval_with_a_prompt_file_prints_the_sweep_and_its_json(tmp_path, capsys):
    checkpoint = tiny_checkpoint()
    folder = save_checkpoint(checkpoint.model, checkpoint.config, tmp_path / "ck")
    text = bytes(ids(3 * L + 5).tolist())
    (tmp_path / "prompt.bin").write_bytes(text)
    assert main(["eval", "--checkpoint", str(folder), "--prompt-file", str(tmp_path / "prompt.bin"),
                 "--mem-lens", "0,4,16", "--json"]) == 0
    *table, last = capsys.readouterr().out.rstrip("\n").split("\n")
    result = json.loads(last)
    expected = memory_sweep(checkpoint.model, list(text), (0, 4, 16))
    assert result == {"checkpoint": str(folder), **expected}
    assert "\n".join(table) + "\n" == sweep_table(expected, "byte")
    assert main(["eval", "--checkpoint", str(folder), "--prompt-file", str(tmp_path / "prompt.bin"),
                 "--mem-lens", "0,-4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "memory lengths" in err and err.count("\n") == 1
