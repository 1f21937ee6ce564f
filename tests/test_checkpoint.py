"""Checkpoint folders: save and load round trips, plain x-transformers loading, the Hub offline, bad folders."""

import json

import pytest
import torch
from safetensors.torch import load_file
from x_transformers import Decoder, TransformerWrapper

from conftest import tiny_checkpoint, tiny_config
from xldemo.checkpoint import load_checkpoint, save_checkpoint
from xldemo.cli import main
from xldemo.errors import XLDemoError
from xldemo.teacher import teacher_forced_logits

TOKENS = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(0))


def saved(tmp_path, dtype="float32", config=None):
    checkpoint = tiny_checkpoint(config)
    folder = save_checkpoint(checkpoint.model, checkpoint.config, tmp_path / "ck", dtype=dtype)
    return checkpoint, folder


def test_save_then_load_gives_identical_logits(tmp_path):
    original, folder = saved(tmp_path)
    loaded = load_checkpoint(folder)
    assert torch.equal(teacher_forced_logits(original.model, TOKENS), teacher_forced_logits(loaded.model, TOKENS))
    assert json.loads((folder / "config.json").read_text())["tokenizer"] == "bytes"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_storage_loads_into_fp32(tmp_path, dtype):
    original, folder = saved(tmp_path, dtype)
    assert {t.dtype for t in load_file(folder / "model.safetensors").values()} == {getattr(torch, dtype)}
    loaded = load_checkpoint(folder)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    torch.testing.assert_close(teacher_forced_logits(loaded.model, TOKENS),
                               teacher_forced_logits(original.model, TOKENS), atol=0.5, rtol=0.05)


def test_plain_x_transformers_loads_it_strictly(tmp_path):
    original, folder = saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.pop("tokenizer")
    model = TransformerWrapper(attn_layers=Decoder(**config.pop("attn_layers")), **config)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    assert torch.equal(teacher_forced_logits(model.eval(), TOKENS), teacher_forced_logits(original.model, TOKENS))


def test_compile_prefix_is_stripped_on_save(tmp_path):
    checkpoint = tiny_checkpoint()
    wrapped = torch.nn.Module()
    wrapped._orig_mod = checkpoint.model  # the attribute torch.compile puts the model under
    folder = save_checkpoint(wrapped, checkpoint.config, tmp_path / "ck")
    assert not any("_orig_mod" in k for k in load_file(folder / "model.safetensors"))
    load_checkpoint(folder)


def fake_hub_cache(tmp_path, repo="someone/tiny-xl", revisions=(("main", 0),)):
    """The Hugging Face cache layout: models--owner--name/{refs/REV, snapshots/COMMIT/files}."""
    cache = tmp_path / "hub"
    root = cache / f"models--{repo.replace('/', '--')}"
    for revision, seed in revisions:
        commit = f"{seed:040x}"
        checkpoint = tiny_checkpoint(seed=seed)
        save_checkpoint(checkpoint.model, checkpoint.config, root / "snapshots" / commit)
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / revision).write_text(commit)
    return cache


def test_hub_repo_loads_offline_from_the_cache(tmp_path):
    cache = fake_hub_cache(tmp_path, revisions=(("main", 0), ("v2", 1)))
    main = load_checkpoint("someone/tiny-xl", cache_dir=str(cache))
    v2 = load_checkpoint("someone/tiny-xl", revision="v2", cache_dir=str(cache))
    assert torch.equal(teacher_forced_logits(main.model, TOKENS), teacher_forced_logits(tiny_checkpoint().model, TOKENS))
    assert not torch.equal(teacher_forced_logits(main.model, TOKENS), teacher_forced_logits(v2.model, TOKENS))


def test_hub_repo_with_a_tokenizer_file_loads_it_from_the_snapshot(tmp_path):
    cache = fake_hub_cache(tmp_path)
    snapshot = next((cache / "models--someone--tiny-xl" / "snapshots").iterdir())
    (snapshot / "vocab.json").write_text(json.dumps([chr(0x100 + i) for i in range(256)]))
    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").write_text(json.dumps({**config, "tokenizer": "vocab.json"}))
    tokenizer = load_checkpoint("someone/tiny-xl", cache_dir=str(cache)).tokenizer
    assert tokenizer.name == "vocab.json" and tokenizer.encode("\u0100\u01ff") == [0, 255]


def test_unknown_hub_repo_offline_is_a_clear_error(tmp_path):
    cache = fake_hub_cache(tmp_path)
    with pytest.raises(XLDemoError, match="Hugging Face Hub cannot provide it"):
        load_checkpoint("someone/not-there", cache_dir=str(cache))
    with pytest.raises(XLDemoError, match="Hugging Face Hub cannot provide it"):
        load_checkpoint("someone/tiny-xl", revision="nope", cache_dir=str(cache))


def write_folder(tmp_path, config=None, weights=None):
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


GOOD = tiny_config()


@pytest.mark.parametrize("config, weights, message", [
    (None, None, "no config.json"),
    ("{not json", None, "not valid JSON"),
    ("[1, 2]", None, "expected a JSON object"),
    ({k: v for k, v in GOOD.items() if k != "num_tokens"}, None, "missing key 'num_tokens'"),
    ({**GOOD, "max_mem_len": 0}, None, "max_mem_len"),
    ({k: v for k, v in GOOD.items() if k != "max_mem_len"}, None, "max_mem_len"),
    ({**GOOD, "max_seq_len": "long"}, None, "max_seq_len"),
    ({**GOOD, "bogus_wrapper_key": 1}, None, "bogus_wrapper_key"),
    ({**GOOD, "attn_layers": {**GOOD["attn_layers"], "bogus_layer_key": 1}}, None, "bogus_layer_key"),
    ({**GOOD, "tokenizer": "sentencepiece"}, None, "unknown tokenizer"),
    # x-transformers builds one head of width 64 in a model of width 32, then fails on the first token
    ({**GOOD, "attn_layers": {**GOOD["attn_layers"], "heads": 1}}, None, "builds this model but cannot run it"),
    (GOOD, None, "no model.safetensors"),
    (GOOD, b"\x00garbage\xff" * 10, "not a readable safetensors file"),
])
def test_bad_folders_are_one_line_errors(tmp_path, config, weights, message):
    folder = write_folder(tmp_path, config, weights)
    with pytest.raises(XLDemoError, match=message) as error:
        load_checkpoint(folder)
    assert "\n" not in str(error.value)


def test_weights_of_another_shape_are_refused(tmp_path):
    _, folder = saved(tmp_path, config=tiny_config(depth=3))
    (folder / "config.json").write_text(json.dumps({**tiny_config(), "tokenizer": "bytes"}))
    with pytest.raises(XLDemoError, match="do not fit config.json"):
        load_checkpoint(folder)


def test_missing_folder_and_non_repo_ids(tmp_path):
    for name in (tmp_path / "nowhere", "./relative/nowhere", "not a repo id"):
        with pytest.raises(XLDemoError, match="no such folder"):
            load_checkpoint(name)


def test_save_refuses_unknown_dtype_and_a_config_that_does_not_fit(tmp_path):
    checkpoint = tiny_checkpoint()
    with pytest.raises(XLDemoError, match="dtype"):
        save_checkpoint(checkpoint.model, checkpoint.config, tmp_path / "a", dtype="int8")
    with pytest.raises(XLDemoError):
        save_checkpoint(checkpoint.model, tiny_config(depth=3), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_average_is_the_weighted_mean_of_every_tensor_and_keeps_the_tokenizer(tmp_path):
    config = {**tiny_config(), "tokenizer": "vocab.json"}
    sources = []
    for seed in (0, 1):
        folder = save_checkpoint(tiny_checkpoint(tiny_config(), seed=seed).model, config, tmp_path / f"ck{seed}")
        (folder / "vocab.json").write_text(json.dumps([chr(0x4E00 + i) for i in range(config["num_tokens"])]))
        sources.append(str(folder))
    assert main(["average", *sources, "--weights", "1,3", "--out", str(tmp_path / "mean")]) == 0
    states = [load_checkpoint(s).model.state_dict() for s in sources]
    mean = load_checkpoint(tmp_path / "mean")
    assert mean.config == load_checkpoint(sources[0]).config and mean.tokenizer.encode("\u4e07\u4e09") == [7, 9]
    for name, tensor in mean.model.state_dict().items():
        torch.testing.assert_close(tensor, 0.25 * states[0][name] + 0.75 * states[1][name], atol=1e-7, rtol=0)


@pytest.mark.parametrize("case, message", [
    ("one", "two checkpoints or more"),
    ("shapes", "differs from"),
    ("count", "3 weights for 2 checkpoints"),
    ("negative", "positive numbers"),
    ("words", "--weights: comma-separated numbers"),
    ("out", "not an empty folder"),
])
def test_average_refuses_what_cannot_be_averaged(tmp_path, capsys, case, message):
    a = str(save_checkpoint(tiny_checkpoint().model, tiny_config(), tmp_path / "a"))
    b = str(save_checkpoint(tiny_checkpoint(tiny_config(depth=3), seed=1).model, tiny_config(depth=3), tmp_path / "b")
            if case == "shapes" else save_checkpoint(tiny_checkpoint(seed=1).model, tiny_config(), tmp_path / "b"))
    args = {"one": [a], "shapes": [a, b], "count": [a, b, "--weights", "1,1,1"], "negative": [a, b, "--weights", "1,-1"],
            "words": [a, b, "--weights", "half,half"], "out": [a, b, "--out", a]}[case]
    out = [] if "--out" in args else ["--out", str(tmp_path / "mean")]
    assert main(["average", *args, *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "mean").exists()
