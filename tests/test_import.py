"""python -m xldemo import: tiny models trained with XLAutoregressiveWrapper, saved every way their users save them,
imported, and generating the original's teacher-forced argmax token for token; bad imports exit 2 in one line."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from x_transformers import Decoder, TransformerWrapper
from x_transformers.xl_autoregressive_wrapper import XLAutoregressiveWrapper

from conftest import byte_level_bpe, tiny_config
from xldemo.checkpoint import load_checkpoint
from xldemo.cli import main
from xldemo.errors import XLDemoError
from xldemo.importer import ImportSettings, import_checkpoint
from xldemo.teacher import teacher_forced_logits

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "xldemo" / "prompts" / "tempest_cast.txt").read_text()
L = 8
PROMPT = "PROSPERO, the ri"  # 16 characters: two whole segments of bytes or characters


def transformer(config: dict) -> TransformerWrapper:
    kwargs = json.loads(json.dumps(config))
    return TransformerWrapper(attn_layers=Decoder(**kwargs.pop("attn_layers")), **kwargs)


def train(config: dict, data: list[int], steps: int = 40, seed: int = 0, **wrapper_kwargs) -> XLAutoregressiveWrapper:
    """A few Adam steps of XLAutoregressiveWrapper.forward on windows of three segments: sharp enough logits for
    greedy decoding to be far from ties."""
    torch.manual_seed(seed)
    wrapper = XLAutoregressiveWrapper(transformer(config), **wrapper_kwargs)
    optimizer = torch.optim.Adam(wrapper.parameters(), lr=3e-3)
    data = torch.tensor(data)
    for starts in torch.randint(0, len(data) - 3 * L - 1, (steps, 4)).tolist():
        wrapper(torch.stack([data[s:s + 3 * L + 1] for s in starts])).backward()  # (4, 3L + 1) tokens
        optimizer.step()
        optimizer.zero_grad()
    return wrapper.eval()


@pytest.fixture(scope="module")
def trained() -> tuple[XLAutoregressiveWrapper, dict]:
    config = tiny_config(seq_len=L, mem_len=L)
    return train(config, list(TEXT.encode())), config


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def accelerate_folder(folder: Path, state: dict, shards: int = 1, safe: bool = True) -> Path:
    """The layout accelerate's save_state (model.safetensors or pytorch_model.bin beside the optimizer's state) and
    save_model (sharded files and their index) write, without accelerate."""
    folder.mkdir()
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.bin")
    stem, ext = ("model", "safetensors") if safe else ("pytorch_model", "bin")
    if shards == 1:
        save_file(state, folder / f"{stem}.{ext}", metadata={"format": "pt"}) if safe else \
            torch.save(state, folder / f"{stem}.{ext}")
        return folder
    keys, weight_map = list(state), {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k] for k in keys[i::shards]}
        save_file(part, folder / name, metadata={"format": "pt"}) if safe else torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def torch_file(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def safetensors_file(path: Path, state: dict) -> Path:
    save_file(state, path)
    return path


# each way a user saves a trained XLAutoregressiveWrapper: (wrapper, folder) -> the SOURCE to import
SAVES = {
    "model state dict": lambda w, d: torch_file(d / "model.pt", w.net.state_dict()),
    "wrapper state dict (net.)": lambda w, d: torch_file(d / "wrapper.pt", w.state_dict()),
    "dict under model": lambda w, d: torch_file(d / "ck.pt", {"model": w.state_dict(), "step": 40}),
    "dict under state_dict": lambda w, d: torch_file(d / "ck.pth", {"state_dict": w.net.state_dict(), "epoch": 2}),
    "dict under model_state_dict": lambda w, d: torch_file(d / "ck.tar", {
        "model_state_dict": w.state_dict(), "optimizer_state_dict": torch.optim.Adam(w.parameters()).state_dict(),
        "loss": 0.5}),
    "DDP (module.)": lambda w, d: torch_file(d / "ddp.pt", prefixed(w.state_dict(), "module.")),
    "torch.compile (_orig_mod.)": lambda w, d: torch_file(d / "compiled.pt", torch.compile(w).state_dict()),
    "DDP of torch.compile": lambda w, d: torch_file(d / "both.pt", {
        "model": prefixed(w.net.state_dict(), "module._orig_mod.")}),
    "torch.compile of DDP": lambda w, d: torch_file(d / "both.pt", prefixed(w.state_dict(), "_orig_mod.module.")),
    "safetensors file": lambda w, d: safetensors_file(d / "model.safetensors", w.net.state_dict()),
    "accelerate save_state": lambda w, d: accelerate_folder(d / "acc", w.state_dict()),
    "accelerate save_model, sharded": lambda w, d: accelerate_folder(d / "acc", w.state_dict(), shards=2),
    "accelerate, not safe_serialization": lambda w, d: accelerate_folder(d / "acc", w.state_dict(), safe=False),
    "accelerate, sharded .bin": lambda w, d: accelerate_folder(d / "acc", w.state_dict(), shards=3, safe=False),
}


def import_cli(capsys, source, config: dict, out: Path, *options) -> str:
    kwargs = out.parent / f"{out.name}-kwargs.json"
    kwargs.write_text(json.dumps(config))
    assert main(["import", str(source), "--config", str(kwargs), "--out", str(out), *map(str, options)]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith("imported ")
    return line


def greedy_cli(capsys, checkpoint: Path, *prompt_args, new_tokens: int = 4 * L) -> dict:
    assert main(["generate", "--checkpoint", str(checkpoint), *map(str, prompt_args), "--max-new-tokens",
                 str(new_tokens), "--temperature", "0", "--json"]) == 0
    return json.loads(capsys.readouterr().out.rstrip("\n").split("\n")[-1])


def teacher_argmax(net: TransformerWrapper, prompt_ids: list[int], ids: list[int]) -> list[int]:
    """The original model's argmax after the prompt and each generated token, in one segmented teacher-forced pass."""
    logits = teacher_forced_logits(net, torch.tensor([prompt_ids + ids]))[0]  # (n, vocab)
    return logits[len(prompt_ids) - 1:-1].argmax(-1).tolist()


@pytest.mark.parametrize("way", SAVES)
def test_every_way_of_saving_imports_and_generates_the_originals_argmax(trained, tmp_path, capsys, way):
    wrapper, config = trained
    out = tmp_path / "imported"
    import_cli(capsys, SAVES[way](wrapper, tmp_path), config, out)
    result = greedy_cli(capsys, out, "--prompt", PROMPT)
    ids = result["token_ids"]
    assert len(ids) == 4 * L and len(result["segments"]) == 6  # four boundaries crossed while generating
    assert ids == teacher_argmax(wrapper.net, list(PROMPT.encode()), ids)


def test_guard_another_model_predicts_other_tokens(trained, tmp_path, capsys):
    """The comparison above can fail: the same greedy ids are not another model's argmax."""
    wrapper, config = trained
    import_cli(capsys, SAVES["model state dict"](wrapper, tmp_path), config, tmp_path / "imported")
    ids = greedy_cli(capsys, tmp_path / "imported", "--prompt", PROMPT)["token_ids"]
    other = train(config, list(TEXT.encode()), steps=40, seed=1).net
    assert ids != teacher_argmax(other, list(PROMPT.encode()), ids)


def test_folder_holds_config_weights_and_a_card_naming_the_source(trained, tmp_path, capsys):
    wrapper, config = trained
    line = import_cli(capsys, SAVES["dict under model"](wrapper, tmp_path), config, tmp_path / "out", "--dtype",
                      "bfloat16")
    assert "ck.pt" in line and "bfloat16" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == {**config, "tokenizer": "bytes"}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`ck.pt`" in card and "'model'" in card and "bfloat16" in card
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left behind


def characters_and_vocab(tmp_path: Path) -> tuple[list[str], Path]:
    vocab = sorted(set(TEXT)) + ["<eos>"]  # an end token the text never holds: the default EOS, never generated
    path = tmp_path / "chars.json"
    path.write_text(json.dumps(vocab))
    return vocab, path


def test_character_vocabulary(tmp_path, capsys):
    vocab, path = characters_and_vocab(tmp_path)
    config = {**tiny_config(seq_len=L, mem_len=L), "num_tokens": len(vocab)}
    wrapper = train(config, [vocab.index(c) for c in TEXT])
    out = tmp_path / "chars"
    import_cli(capsys, SAVES["wrapper state dict (net.)"](wrapper, tmp_path), config, out, "--tokenizer", path)
    assert json.loads((out / "config.json").read_text())["tokenizer"] == "vocab.json"
    assert json.loads((out / "vocab.json").read_text()) == vocab
    assert load_checkpoint(out).tokenizer.eos_id == len(vocab) - 1
    result = greedy_cli(capsys, out, "--prompt", PROMPT)
    ids = result["token_ids"]
    assert len(ids) == 4 * L and result["reason"] == "length"
    assert ids == teacher_argmax(wrapper.net, [vocab.index(c) for c in PROMPT], ids)
    assert result["text"] == "".join(vocab[i] for i in ids)
    # a prompt file is UTF-8 text for a character vocabulary, not bytes
    (tmp_path / "prompt.txt").write_text(PROMPT)
    assert greedy_cli(capsys, out, "--prompt-file", tmp_path / "prompt.txt")["token_ids"] == ids


@pytest.mark.parametrize("prompt_args, message", [
    (["--prompt", "PROSPERO Ω"], "'Ω' (U+03A9, character 10)"),
    (["--prompt-file", "{tmp}/latin1.txt"], "not UTF-8 text (byte 0xe9 at offset 3)"),
])
def test_character_vocabulary_refuses_what_it_cannot_encode(tmp_path, capsys, prompt_args, message):
    vocab, path = characters_and_vocab(tmp_path)
    config = {**tiny_config(seq_len=L, mem_len=L), "num_tokens": len(vocab)}
    import_cli(capsys, SAVES["model state dict"](train(config, [0, 1] * 40, steps=1), tmp_path), config,
               tmp_path / "chars", "--tokenizer", path)
    (tmp_path / "latin1.txt").write_bytes("Caf\u00e9".encode("latin-1"))
    args = [a.format(tmp=tmp_path) for a in prompt_args]
    assert main(["generate", "--checkpoint", str(tmp_path / "chars"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_bpe_tokenizer_json(tmp_path, capsys):
    bpe = byte_level_bpe(TEXT, 300)
    bpe.save(str(tmp_path / "bpe.json"))
    config = {**tiny_config(seq_len=L, mem_len=L), "num_tokens": bpe.get_vocab_size()}
    wrapper = train(config, bpe.encode(TEXT).ids, steps=60)
    out = tmp_path / "bpe"
    import_cli(capsys, SAVES["accelerate save_state"](wrapper, tmp_path), config, out, "--tokenizer",
               tmp_path / "bpe.json")
    assert json.loads((out / "config.json").read_text())["tokenizer"] == "tokenizer.json"
    assert load_checkpoint(out).tokenizer.eos_id == bpe.token_to_id("<|endoftext|>")
    prompt = "PROSPERO, the right Duke of Milan\nANTONIO, his Brother, the usurping Duke"
    prompt_ids = bpe.encode(prompt).ids
    assert len(prompt_ids) > 2 * L  # the prompt alone fills segments
    result = greedy_cli(capsys, out, "--prompt", prompt)
    ids = result["token_ids"]
    assert len(ids) == 4 * L and result["prompt_tokens"] == len(prompt_ids)
    assert ids == teacher_argmax(wrapper.net, prompt_ids, ids)
    assert result["text"] == bpe.decode(ids)


def test_a_character_over_several_bpe_tokens_streams_whole(tmp_path, capsys):
    """é and the wave are no merges of this BPE: each arrives as two and four byte tokens, and the imported
    checkpoint's tokenizer shows nothing of either until all its tokens have come."""
    bpe = byte_level_bpe(TEXT, 300)
    bpe.save(str(tmp_path / "bpe.json"))
    config = {**tiny_config(seq_len=L, mem_len=L), "num_tokens": bpe.get_vocab_size()}
    import_cli(capsys, SAVES["model state dict"](train(config, bpe.encode(TEXT).ids, steps=1), tmp_path), config,
               tmp_path / "bpe", "--tokenizer", tmp_path / "bpe.json")
    tokenizer = load_checkpoint(tmp_path / "bpe").tokenizer
    ids = tokenizer.encode("é🌊")
    assert len(ids) == 6
    decoder = tokenizer.stream_decoder()
    assert [decoder.push(i) for i in ids] == ["", "é", "", "", "", "🌊"] and decoder.flush() == ""


def test_default_eos_is_the_tokenizers_end_token(tmp_path, capsys):
    """A model trained to end its text: greedy generation stops at <eos> without --eos, and runs on with --eos
    naming another token."""
    vocab, path = characters_and_vocab(tmp_path)
    eos = len(vocab) - 1
    config = {**tiny_config(seq_len=L, mem_len=L), "num_tokens": len(vocab)}
    wrapper = train(config, ([vocab.index(c) for c in "abcdefg"] + [eos]) * 20, steps=80)  # after g, the end
    import_cli(capsys, SAVES["model state dict"](wrapper, tmp_path), config, tmp_path / "eos", "--tokenizer", path)
    stopped = greedy_cli(capsys, tmp_path / "eos", "--prompt", "abcdefgabcd")
    assert stopped["reason"] == "eos" and stopped["token_ids"] == [vocab.index(c) for c in "efg"] + [eos]
    assert stopped["text"] == "efg"
    run_on = greedy_cli(capsys, tmp_path / "eos", "--prompt", "abcdefgabcd", "--eos", vocab.index("a"))
    assert run_on["token_ids"] == stopped["token_ids"] + [vocab.index("a")] and run_on["text"] == "efg<eos>"


def bad_sources(tmp_path: Path, wrapper: XLAutoregressiveWrapper, config: dict) -> None:
    torch.save(wrapper.state_dict(), tmp_path / "good.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a pickle\xff" * 10)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00not safetensors\xff" * 10)
    torch.save({"model": wrapper.state_dict(), "args": argparse.Namespace(lr=3e-3)}, tmp_path / "namespace.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no-state.pt")
    torch.save(XLAutoregressiveWrapper(transformer(config), episodic_mem_len=4).state_dict(), tmp_path / "episodic.pt")
    ttt = XLAutoregressiveWrapper(transformer(config), ttt_module_paths=("attn_layers.layers.0.1.to_q",), tbptt_steps=2)
    torch.save(ttt.state_dict(), tmp_path / "ttt.pt")
    (tmp_path / "empty-folder").mkdir()
    huge = wrapper.net.state_dict()
    torch.save({**huge, "to_logits.weight": huge["to_logits.weight"] * 1e6}, tmp_path / "huge.pt")
    accelerate_folder(tmp_path / "lost-shard", wrapper.state_dict(), shards=2)
    (tmp_path / "lost-shard" / "model-00002-of-00002.safetensors").unlink()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "short-vocab.json").write_text(json.dumps(["a", "b", "c"]))
    (tmp_path / "not-a-tokenizer.json").write_text(json.dumps({"vocab": ["a"]}))
    for name, kwargs in {"deeper": tiny_config(depth=3), "wider": tiny_config(dim=64, heads=2),
                         "rejected": {**config, "attn_layers": {**config["attn_layers"], "wings": 2}},
                         "with-tokenizer": {**config, "tokenizer": "bytes"}}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(kwargs))
    (tmp_path / "kwargs.json").write_text(json.dumps(config))


@pytest.mark.parametrize("source, options, message", [
    ("good.pt", ["--config", "{tmp}/deeper.json"], "missing 'attn_layers.layers.4.0.0.gamma'"),
    ("good.pt", ["--config", "{tmp}/wider.json"], "'net.token_emb.emb.weight' is (256, 32) in the source, (256, 64)"),
    ("good.pt", ["--config", "{tmp}/rejected.json"], "wings"),
    ("good.pt", ["--config", "{tmp}/with-tokenizer.json"], "give it with --tokenizer"),
    ("good.pt", ["--config", "{tmp}/nowhere.json"], "nowhere.json: no such file"),
    ("nowhere.pt", [], "nowhere.pt: no such file or folder"),
    ("garbage.pt", [], "not a torch.save or safetensors file"),
    ("garbage.safetensors", [], "not a readable safetensors file"),
    ("namespace.pt", [], "holds a Python object (argparse.Namespace) that a weights-only load refuses"),
    ("no-state.pt", [], "'epoch' is a int: expected a state dict"),
    ("episodic.pt", [], "episodic memory (XLAutoregressiveWrapper's episodic_mem_len) is not supported "
                        "(key 'net.episodic_mems.mem_kv')"),
    ("ttt.pt", [], "test-time training"),
    ("empty-folder", [], "holds none of model.safetensors"),
    ("lost-shard", [], "names the shard 'model-00002-of-00002.safetensors'"),
    ("good.pt", ["--tokenizer", "{tmp}/short-vocab.json"], "3 tokens, but the model has num_tokens=256"),
    ("good.pt", ["--tokenizer", "{tmp}/not-a-tokenizer.json"], "neither a vocab.json"),
    ("good.pt", ["--tokenizer", "{tmp}/no-such-vocab.json"], "cannot read it"),
    ("good.pt", ["--out", "{tmp}/taken"], "exists and is not an empty folder"),
    ("good.pt", ["--out", "/proc/xldemo/out"], "cannot write there"),
    ("huge.pt", ["--dtype", "float16"], "log-probabilities are not finite"),
])
def test_bad_imports_exit_2_in_one_line_and_write_nothing(trained, tmp_path, capsys, source, options, message):
    wrapper, config = trained
    bad_sources(tmp_path, wrapper, config)
    options = [o.format(tmp=tmp_path) for o in options]
    defaults = {"--config": str(tmp_path / "kwargs.json"), "--out": str(tmp_path / "out")}
    for flag, value in defaults.items():
        if flag not in options:
            options += [flag, value]
    assert main(["import", str(tmp_path / source), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_a_real_process_imports_then_reports_a_bad_import_without_traceback(trained, tmp_path):
    wrapper, config = trained
    bad_sources(tmp_path, wrapper, config)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "xldemo", "import", *map(str, args)], capture_output=True,
                              text=True, cwd=ROOT, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})

    good = run(tmp_path / "good.pt", "--config", tmp_path / "kwargs.json", "--out", tmp_path / "out")
    assert good.returncode == 0 and good.stdout.startswith("imported ") and good.stdout.count("\n") == 1, good.stderr
    bad = run(tmp_path / "namespace.pt", "--config", tmp_path / "kwargs.json", "--out", tmp_path / "out2")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr, bad.stderr


def test_python_api_takes_paths_and_refuses_missing_ones(trained, tmp_path):
    wrapper, config = trained
    (tmp_path / "kwargs.json").write_text(json.dumps(config))
    line = import_checkpoint(SAVES["model state dict"](wrapper, tmp_path),
                             ImportSettings(config=tmp_path / "kwargs.json", out=tmp_path / "api"))
    assert line.startswith("imported ") and load_checkpoint(tmp_path / "api").tokenizer.name == "bytes"
    with pytest.raises(XLDemoError, match="out must be a path"):
        ImportSettings(config="kwargs.json", out=None)
