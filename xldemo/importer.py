"""Importing a model trained elsewhere: weights saved the ways x-transformers users save them, made a checkpoint."""

import json
import math
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from x_transformers import TransformerWrapper

from .checkpoint import STORAGE_DTYPES, build_model, load_checkpoint, new_folder, read_config, save_checkpoint
from .engine import GenerationSettings, Token, generate
from .errors import XLDemoError, one_line
from .options import setting
from .tokenizer import BYTES, ByteTokenizer, read_tokenizer

# what wrappers put before a TransformerWrapper's keys: XLAutoregressiveWrapper and EpisodicMemoryWrapper (net.),
# DistributedDataParallel (module.), torch.compile (_orig_mod.)
WRAPPER_PREFIXES = ("net", "module", "_orig_mod")
# where a training checkpoint saved with torch.save keeps the model's state dict
STATE_KEYS = ("model", "state_dict", "model_state_dict")
# what accelerate's save_state and save_model write for the (first) model, in the order they are looked for
ACCELERATE_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ImportSettings:
    config: str | None = setting(None, "TransformerWrapper's keyword arguments as JSON, attn_layers holding Decoder's",
                                 required=True, metavar="KWARGS.json")
    out: str | None = setting(None, "checkpoint folder to write; it must not exist or be empty", required=True,
                              metavar="DIR")
    tokenizer: str = setting(BYTES, "bytes, or the path of a Hugging Face tokenizer.json or of a vocab.json "
                                    "(a JSON list: token id -> text)", metavar="bytes|PATH")
    dtype: str = setting("float32", "dtype of the stored weights", choices=tuple(STORAGE_DTYPES))

    def __post_init__(self):
        for name in ("config", "out"):
            if not isinstance(getattr(self, name), (str, os.PathLike)) or not str(getattr(self, name)):
                raise XLDemoError(f"{name} must be a path, got {getattr(self, name)!r}")


def import_checkpoint(source: str | Path, settings: ImportSettings) -> str:
    """Writes settings.out from the weights saved at source, once they load strictly and the folder generates;
    returns a line saying what was written."""
    config = read_config(settings.config)
    if "tokenizer" in config:
        raise XLDemoError(f"{settings.config}: 'tokenizer' is no TransformerWrapper argument; give it with --tokenizer")
    tokenizer = ByteTokenizer() if settings.tokenizer == BYTES else read_tokenizer(settings.tokenizer,
                                                                                   config["num_tokens"])
    out = new_folder(settings.out)
    state, found = read_state(source)
    model = fit(state, config)
    # written beside out and renamed into place once it works: a failed import leaves nothing behind
    staging = out.parent / f".{out.name}.importing-{os.getpid()}"
    try:
        staging.mkdir(parents=True)
    except OSError as e:
        raise XLDemoError(f"--out {out}: cannot write there ({e.strerror})") from None
    try:
        save_checkpoint(model, {**config, "tokenizer": tokenizer.name}, staging, settings.dtype)
        if tokenizer.name != BYTES:
            shutil.copyfile(settings.tokenizer, staging / tokenizer.name)
        (staging / "README.md").write_text(model_card(out.name, Path(source).name, found, model, tokenizer,
                                                      settings.dtype))
        check_generates(staging)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    parameters = sum(p.numel() for p in model.parameters())
    return (f"imported {source} ({found}) into {out}: {parameters / 1e6:.2f}M parameters, tokenizer {tokenizer.name}, "
            f"{settings.dtype}; it loads and generates")


def read_state(source: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict saved at source, and where it was found (for the model card), never unpickling code."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise XLDemoError(f"{source}: no such file or folder")
    return _read_file(path)


def _read_folder(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    name = next((n for n in ACCELERATE_FILES if (folder / n).is_file()), None)
    if name is None:
        raise XLDemoError(f"{folder}: holds none of {', '.join(ACCELERATE_FILES)} (what accelerate's save_state and "
                          f"save_model write)")
    if not name.endswith(".index.json"):
        return _read_file(folder / name)[0], f"an accelerate folder's {name}"
    try:
        shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise XLDemoError(f"{folder / name}: not a shard index with a weight_map ({one_line(e)})") from None
    state = {}
    for shard in shards:
        if Path(shard).name != shard or not (folder / shard).is_file():
            raise XLDemoError(f"{folder / name}: names the shard {shard!r}, which {folder} lacks")
        state.update(_read_file(folder / shard)[0])
    return state, f"an accelerate folder's {len(shards)} shards"


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if path.suffix == ".safetensors":
        try:
            return load_file(path), "a safetensors file"
        except Exception as e:  # safetensors reports a bad header as SafetensorError, a short file as OSError...
            raise XLDemoError(f"{path}: not a readable safetensors file ({one_line(e)})") from None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused:
            raise XLDemoError(f"{path}: holds a Python object ({refused.group(1)}) that a weights-only load refuses, "
                              f"and xldemo never unpickles code: save the model's state_dict() alone, or in a dict of "
                              f"tensors and numbers") from None
        raise XLDemoError(f"{path}: not a torch.save or safetensors file (torch.load: {one_line(e)[:120]})") from None
    except Exception as e:  # torch.load reports a file that is no pickle as KeyError, RuntimeError, EOFError...
        raise XLDemoError(f"{path}: not a torch.save or safetensors file "
                          f"(torch.load: {type(e).__name__} {one_line(e)[:120]})") from None
    return _find_state(saved, path)


def _find_state(saved, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not isinstance(saved, dict):
        raise XLDemoError(f"{path}: holds a {type(saved).__name__}, not a state dict")
    found = "a torch.save state dict"
    key = next((k for k in STATE_KEYS if isinstance(saved.get(k), dict)), None)
    if key is not None:
        saved, found = saved[key], f"a torch.save dict's {key!r}"
    for name, value in saved.items():
        if not isinstance(value, torch.Tensor):
            raise XLDemoError(f"{path}: {name!r} is a {type(value).__name__}: expected a state dict, or a dict holding "
                              f"one under {', '.join(map(repr, STATE_KEYS))}")
    return saved, found


def unwrap_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state under the TransformerWrapper's own names, wrapper prefixes taken off in any number and order;
    and for each name, the key it was saved under (for messages)."""
    named, saved_as = {}, {}
    for key, value in state.items():
        parts = key.split(".")
        while len(parts) > 1 and parts[0] in WRAPPER_PREFIXES:
            parts = parts[1:]
        name = ".".join(parts)
        if name in named:
            raise XLDemoError(f"the keys {saved_as[name]!r} and {key!r} both name {name!r} once the wrapper prefixes "
                              f"are taken off")
        named[name], saved_as[name] = value, key
    return named, saved_as


def fit(state: dict[str, torch.Tensor], config: dict) -> TransformerWrapper:
    """The model config describes, holding state; else an error naming the first keys or shape that differ."""
    model = build_model(config)
    named, saved_as = unwrap_keys(state)
    expected = model.state_dict()
    unexpected = [name for name in named if name not in expected]
    for name in unexpected:
        feature = _unsupported_feature(name)
        if feature:
            raise XLDemoError(f"{feature} is not supported (key {saved_as[name]!r}): xldemo runs the "
                              f"TransformerWrapper alone")
    missing = [name for name in expected if name not in named]
    if missing or unexpected:
        found = ([f"missing {_first(missing)}"] if missing else []) + \
                ([f"unexpected {_first([saved_as[n] for n in unexpected])}"] if unexpected else [])
        raise XLDemoError(f"the weights do not fit --config: {'; '.join(found)}")
    for name, tensor in expected.items():
        if named[name].shape != tensor.shape:
            raise XLDemoError(f"the weights do not fit --config: {saved_as[name]!r} is {tuple(named[name].shape)} in "
                              f"the source, {tuple(tensor.shape)} in the model")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in named.items()}, strict=True)
    return model.eval()


def _unsupported_feature(name: str) -> str | None:
    """The x-transformers feature xldemo cannot run that a key left over after unwrapping belongs to, if any."""
    if name.startswith("episodic_mems."):
        return "episodic memory (XLAutoregressiveWrapper's episodic_mem_len)"
    # TTTModuleWrapper keeps the module it trains at test time under .module; the loss modules sit on the wrapper
    if ".module." in name or name.startswith("ttt_custom_loss_module."):
        return "test-time training (XLAutoregressiveWrapper's ttt_module_paths, ttt_low_rank_paths or ttt losses)"
    return None


def _first(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(map(repr, keys[:shown])) + more


def check_generates(folder: Path) -> None:
    """Loads folder as any user would and runs two greedy steps through the engine."""
    events = generate(load_checkpoint(folder), [0], GenerationSettings(max_new_tokens=2, temperature=0, seed=0))
    if not all(math.isfinite(e.logprob) for e in events if isinstance(e, Token)):
        raise XLDemoError("the imported model's log-probabilities are not finite (do its weights overflow the dtype?)")


def model_card(name: str, source: str, found: str, model: TransformerWrapper, tokenizer, dtype: str) -> str:
    """A README.md stub: what the folder holds and where it came from, with a place for what only its author knows."""
    layers, parameters = model.attn_layers, sum(p.numel() for p in model.parameters())
    eos = f", end-of-text token {tokenizer.eos_id}" if tokenizer.eos_id is not None else ""
    return f"""---
library_name: x-transformers
tags: [transformer-xl, xldemo]
---

# {name}

A Transformer-XL language model (x-transformers' `TransformerWrapper` with a `Decoder`), imported with
`python -m xldemo import` from `{source}` ({found}).

- {parameters:,} parameters: {layers.num_attn_layers} attention layers of width {layers.dim}; segments of
  {model.max_seq_len} tokens, a memory of {model.max_mem_len} per layer
- tokenizer: {tokenizer.name} ({tokenizer.vocab_size} tokens{eos})
- weights stored as {dtype}; `config.json` holds the model's keyword arguments

To do: what it was trained on, for how long, and how well it does.

```bash
python -m xldemo generate --checkpoint {name} --prompt "..." --max-new-tokens 200
XLDEMO_CHECKPOINT={name} python app.py
```
"""
