"""Checkpoints: config.json, model.safetensors and any tokenizer file in a folder, from disk or the Hugging Face Hub."""

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from x_transformers import Decoder, TransformerWrapper

from .errors import XLDemoError, one_line
from .tokenizer import BYTES, ByteTokenizer, Tokenizer, TokenizerJson, VocabTokenizer, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# the tokenizer files under the names xldemo writes them; a local folder may name any file of its own
HUB_FILES = [CONFIG_FILE, WEIGHTS_FILE, "README.md", TokenizerJson.name, VocabTokenizer.name]
# keys of ours in config.json; every other key is a TransformerWrapper keyword argument
XLDEMO_KEYS = {"tokenizer": ByteTokenizer.name}
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_CHECKPOINT = SHIPPED / "shakespeare-xl"
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class Checkpoint:
    model: TransformerWrapper  # fp32, on the CPU, in eval mode
    config: dict
    tokenizer: Tokenizer
    source: str

    @property
    def max_seq_len(self) -> int:
        return self.model.max_seq_len

    @property
    def max_mem_len(self) -> int:
        return self.model.max_mem_len


def check_config(config) -> dict:
    """Returns config unchanged if it can describe an XL model, else raises naming the bad key."""
    if not isinstance(config, dict):
        raise XLDemoError("config.json: expected a JSON object")
    for key in ("num_tokens", "max_seq_len", "attn_layers"):
        if key not in config:
            raise XLDemoError(f"config.json: missing key {key!r}")
    if not isinstance(config["attn_layers"], dict):
        raise XLDemoError("config.json: 'attn_layers' must be an object of Decoder arguments")
    for key in ("num_tokens", "max_seq_len"):
        if not _is_positive_int(config[key]):
            raise XLDemoError(f"config.json: {key!r} must be a positive integer, got {config[key]!r}")
    if not _is_positive_int(config.get("max_mem_len", 0)):
        raise XLDemoError("config.json: 'max_mem_len' must be a positive integer: xldemo runs XL models with memory")
    return config


def build_model(config: dict) -> TransformerWrapper:
    """The untrained TransformerWrapper that config describes."""
    model = _construct(config)
    _check_runs(model)
    return model


def parameter_count(config: dict) -> int:
    """The parameters of the model config describes, counted on the meta device: no memory taken, nothing run."""
    with torch.device("meta"):
        return sum(p.numel() for p in _construct(config).parameters())


def check_hub_size(repo_id: str, max_parameters: int, max_bytes: int, revision: str | None = None,
                   cache_dir: str | None = None) -> None:
    """Refuses a Hub checkpoint too big to serve before any weights are downloaded: config.json alone is fetched
    and its parameters counted, then the files' sizes are read from the Hub's metadata. Messages name the repo."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        path = hf_hub_download(repo_id, CONFIG_FILE, revision=revision, cache_dir=cache_dir)
    except Exception as e:  # offline, unknown repo or revision, network: all mean "cannot have it"
        raise XLDemoError(f"checkpoint {repo_id!r}: the Hugging Face Hub cannot provide its {CONFIG_FILE} "
                          f"({type(e).__name__})") from None
    try:
        config = read_config(path)
    except XLDemoError as e:  # named by the repo, not by where the server's cache keeps it
        raise XLDemoError(str(e).replace(str(path), f"checkpoint {repo_id!r}: {CONFIG_FILE}")) from None
    count = parameter_count(config)
    if count > max_parameters:
        raise XLDemoError(f"checkpoint {repo_id!r} has {count / 1e6:,.1f}M parameters; this server loads models of "
                          f"at most {max_parameters / 1e6:,.1f}M")
    try:
        files = HfApi().get_paths_info(repo_id, HUB_FILES, revision=revision)
    except Exception as e:
        raise XLDemoError(f"checkpoint {repo_id!r}: the Hugging Face Hub cannot list its files "
                          f"({type(e).__name__})") from None
    size = sum(getattr(f, "size", None) or 0 for f in files)
    if size > max_bytes:
        raise XLDemoError(f"checkpoint {repo_id!r} is {size / 2**20:,.0f} MB to download; this server downloads at "
                          f"most {max_bytes / 2**20:,.0f} MB")


def _construct(config: dict) -> TransformerWrapper:
    kwargs = {k: v for k, v in check_config(config).items() if k not in XLDEMO_KEYS}
    attn_layers = dict(kwargs.pop("attn_layers"))
    try:
        return TransformerWrapper(attn_layers=Decoder(**attn_layers), **kwargs)
    except Exception as e:  # x-transformers reports bad arguments as TypeError, AssertionError, ValueError...
        raise XLDemoError(f"config.json: x-transformers rejects it: {one_line(e)}") from None


@torch.inference_mode()
def _check_runs(model: TransformerWrapper) -> None:
    """Some configurations x-transformers builds but cannot run (one head whose width is not the model's, say):
    two tiny segments, the second with memory, make them fail here with their reason, not mid-generation."""
    tokens = torch.zeros(1, min(2, model.max_seq_len), dtype=torch.long)
    try:
        _, mems = model(tokens, return_mems=True)
        model(tokens[:, :1], mems=mems)
    except Exception as e:
        raise XLDemoError(f"config.json: x-transformers builds this model but cannot run it ({one_line(e)})") from None


def load_checkpoint(name_or_path: str | Path = DEFAULT_CHECKPOINT, revision: str | None = None,
                    cache_dir: str | None = None) -> Checkpoint:
    """A local folder, else a Hugging Face Hub repo id (honouring revision, the cache and HF_HUB_OFFLINE). A Hub
    repo's errors name the repo, not the folder of the server's cache it sits in."""
    folder = resolve(name_or_path, revision, cache_dir)
    try:
        return _load(folder, str(name_or_path))
    except XLDemoError as e:
        if folder == Path(name_or_path).expanduser():  # a local folder: the caller named that path
            raise
        raise XLDemoError(str(e).replace(str(folder), f"{name_or_path} (Hugging Face Hub)")) from None


def _load(folder: Path, source: str) -> Checkpoint:
    config = read_config(folder)
    tokenizer = load_tokenizer(config.get("tokenizer", XLDEMO_KEYS["tokenizer"]), folder, config["num_tokens"])
    model = build_model(config)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise XLDemoError(f"{folder}: no {WEIGHTS_FILE}")
    try:
        state = load_file(weights)
    except Exception as e:
        raise XLDemoError(f"{weights}: not a readable safetensors file ({one_line(e)})") from None
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise XLDemoError(f"{weights}: weights do not fit config.json ({one_line(e)})") from None
    return Checkpoint(model.eval(), config, tokenizer, source)


def resolve(name_or_path: str | Path, revision: str | None = None, cache_dir: str | None = None) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or not REPO_ID.match(name):
        raise XLDemoError(f"checkpoint {name!r}: no such folder, and not a Hugging Face Hub repo id (owner/name)")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo or revision, network: all mean "cannot have it"
        reason = one_line(e).replace(str(cache_dir or constants.HF_HUB_CACHE), "the Hub cache")  # no server paths
        raise XLDemoError(f"checkpoint {name!r}: not a local folder, and the Hugging Face Hub "
                          f"cannot provide it ({type(e).__name__}: {reason})") from None


def save_checkpoint(model: TransformerWrapper, config: dict, folder: str | Path, dtype: str = "float32") -> Path:
    """Writes model as a checkpoint any x-transformers user can load; config holds its constructor arguments."""
    if dtype not in STORAGE_DTYPES:
        raise XLDemoError(f"dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    config = {**XLDEMO_KEYS, **config}
    state = {_strip_compile_prefix(k): v.detach().to("cpu", STORAGE_DTYPES[dtype]).contiguous().clone()
             for k, v in model.state_dict().items()}
    try:  # fail before writing anything that would not load
        build_model(config).load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise XLDemoError(f"the model does not fit this config ({one_line(e)})") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def average_checkpoints(sources: list[str], out: str | Path, weights: list[float] | None = None) -> Path:
    """A checkpoint whose every tensor is the weighted mean of the sources' (weights: equal by default, scaled to
    sum to 1), written to out. The sources must share one config: the mean of two fine-tunings of one model, or of a
    model and its fine-tuning, is a model of the same shape."""
    weights = [1.0] * len(sources) if weights is None else weights
    if len(sources) < 2:
        raise XLDemoError(f"averaging takes two checkpoints or more, got {len(sources)}")
    if len(weights) != len(sources):
        raise XLDemoError(f"{len(weights)} weights for {len(sources)} checkpoints")
    if not all(isinstance(w, int | float) and math.isfinite(w) and w > 0 for w in weights):
        raise XLDemoError(f"weights must be positive numbers, got {', '.join(map(str, weights))}")
    out = new_folder(out)
    checkpoints = [load_checkpoint(source) for source in sources]
    first = checkpoints[0]
    for source, checkpoint in zip(sources[1:], checkpoints[1:]):
        if checkpoint.config != first.config:
            raise XLDemoError(f"{source}: its config.json differs from {sources[0]}'s: only models of one shape "
                              "average")
    total, states = sum(weights), [c.model.state_dict() for c in checkpoints]
    first.model.load_state_dict({k: sum(w / total * state[k] for w, state in zip(weights, states)) for k in states[0]})
    save_checkpoint(first.model, first.config, out)
    tokenizer = first.config.get("tokenizer", BYTES)
    if tokenizer != BYTES:  # a tokenizer file travels with the weights
        shutil.copyfile(resolve(sources[0]) / tokenizer, out / tokenizer)
    return out


def new_folder(out: str | Path) -> Path:
    """out, refused unless it does not exist yet or is an empty folder: no checkpoint is written over other files."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise XLDemoError(f"--out {out}: exists and is not an empty folder")
    return out


def read_config(path: str | Path) -> dict:
    """The checked config of a checkpoint folder, or of a config file such as xldemo/configs/*.json."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        raise XLDemoError(f"{path.parent}: no {CONFIG_FILE}" if path.name == CONFIG_FILE else f"{path}: no such file")
    try:
        return check_config(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XLDemoError(f"{path}: not valid JSON ({one_line(e)})") from None


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoint folders under checkpoints/."""
    return sorted(p.name for p in SHIPPED.iterdir() if (p / CONFIG_FILE).is_file()) if SHIPPED.is_dir() else []


def _strip_compile_prefix(key: str) -> str:
    return key.replace("_orig_mod.", "")


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
