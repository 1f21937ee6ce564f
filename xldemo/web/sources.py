"""Which checkpoints the app serves (shipped folders, the configured default, Hub repo ids), loaded once each."""

import os
from functools import lru_cache
from pathlib import Path

from ..checkpoint import (DEFAULT_CHECKPOINT, REPO_ID, SHIPPED, Checkpoint, check_hub_size, load_checkpoint,
                          read_config, shipped_checkpoints)
from ..errors import XLDemoError

CACHE_SIZE = 2  # checkpoints held in memory, least recently used dropped first
# the operator's fence around visitors' Hub repo ids: defaults, each overridden by the environment variable it names
FENCE = {"XLDEMO_ALLOWED_REPOS": "",  # repo ids visitors may load, comma-separated, or * for any; none by default
         "XLDEMO_MAX_PARAMETERS": 100_000_000,  # a Hub checkpoint's largest model
         "XLDEMO_MAX_DOWNLOAD_MB": 512}  # a Hub checkpoint's largest download


def configured_checkpoint() -> str:
    """XLDEMO_CHECKPOINT (a folder or a Hub repo id) if set, else the shipped default's name."""
    return os.environ.get("XLDEMO_CHECKPOINT") or DEFAULT_CHECKPOINT.name


def checkpoint_source(name, default: str) -> str:
    """Where to load a checkpoint named in the UI from: a shipped name, the configured default, or a Hub repo
    id that XLDEMO_ALLOWED_REPOS allows. Other local paths are refused: a client must not make the server read
    arbitrary folders."""
    if not isinstance(name, str) or not name.strip():
        raise XLDemoError("Choose a checkpoint: a shipped one, or a Hugging Face Hub repo id (owner/name).")
    name = name.strip()
    if name in shipped_checkpoints() or name == default == DEFAULT_CHECKPOINT.name:
        return str(SHIPPED / name)  # the default's full path makes a clearer error while it is missing
    if name == default:
        return name
    if REPO_ID.match(name) and ".." not in name and not Path(name).expanduser().exists():
        allowed = {r.strip() for r in os.environ.get("XLDEMO_ALLOWED_REPOS", FENCE["XLDEMO_ALLOWED_REPOS"]).split(",")}
        if "*" not in allowed and name not in allowed:
            raise XLDemoError(f"This server does not load {name!r} from the Hugging Face Hub: its operator lists the "
                              f"repos it may load in XLDEMO_ALLOWED_REPOS.")
        return name
    shipped = ", ".join(shipped_checkpoints()) or "none"
    raise XLDemoError(f"Unknown checkpoint {name!r}: choose a shipped one ({shipped}) or type a Hugging Face Hub "
                      f"repo id (owner/name).")


@lru_cache(maxsize=CACHE_SIZE)
def cached_checkpoint(source: str) -> Checkpoint:
    """The checkpoint at source, loaded once and shared read-only by every run; a failed load is not cached. A Hub
    repo's size is checked against XLDEMO_MAX_PARAMETERS and XLDEMO_MAX_DOWNLOAD_MB before its weights come."""
    if REPO_ID.match(source) and not Path(source).expanduser().is_dir():
        check_hub_size(source, *hub_limits())
    return load_checkpoint(source)


def hub_limits() -> tuple[int, int]:
    """(parameters, bytes): the largest model and download a visitor's Hub repo may have."""
    return (env_number("XLDEMO_MAX_PARAMETERS", FENCE["XLDEMO_MAX_PARAMETERS"], int, least=1),
            env_number("XLDEMO_MAX_DOWNLOAD_MB", FENCE["XLDEMO_MAX_DOWNLOAD_MB"], int, least=1) * 2**20)


def env_number(name: str, default, kind: type = int, least: float | None = None, above: float | None = None,
               most: float | None = None, why_most: str = ""):
    """The operator's setting `name` from the environment as a kind (int or float), or default where it is unset or
    empty; a value that is not one, below least, not above `above` or over most (why_most says why, in brackets) is
    refused in one line naming it."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        raise XLDemoError(f"{name} must be {what}, got {text!r}") from None
    # written so that NaN fails them too
    if least is not None and not value >= least:
        raise XLDemoError(f"{name} must be {what} >= {least:g}, got {text!r}")
    if above is not None and not value > above:
        raise XLDemoError(f"{name} must be {what} above {above:g}, got {text!r}")
    if most is not None and not value <= most:
        raise XLDemoError(f"{name} must be {what} <= {most:g}{f' ({why_most})' if why_most else ''}, got {text!r}")
    return value


def default_max_mem_len(source: str, fallback: int) -> int:
    """The memory length of a local checkpoint, read from its config without loading weights; fallback when it
    has no readable config here (a Hub id, a missing folder), so that the page still builds."""
    for folder in (Path(source).expanduser(), SHIPPED / source):
        try:
            return read_config(folder)["max_mem_len"]
        except XLDemoError:
            continue
    return fallback


def model_chips(checkpoint: Checkpoint) -> list[tuple[str, str]]:
    """(value, label) pairs describing the model, for a stats line."""
    layers = checkpoint.config["attn_layers"]
    parameters = sum(p.numel() for p in checkpoint.model.parameters())
    return [(f"{checkpoint.max_seq_len}", "tokens per segment"), (f"{checkpoint.max_mem_len}", "memory per layer"),
            (f"{layers.get('depth', '?')} × {layers.get('dim', '?')}", "layers × width"),
            (f"{parameters / 1e6:.1f} M", "parameters")]
