"""Which checkpoints the app serves (shipped folders, the configured default, Hub repo ids), loaded once each."""

import os
from functools import lru_cache
from pathlib import Path

from ..checkpoint import DEFAULT_CHECKPOINT, REPO_ID, SHIPPED, Checkpoint, load_checkpoint, read_config, \
    shipped_checkpoints
from ..errors import XLDemoError

CACHE_SIZE = 2  # checkpoints held in memory, least recently used dropped first


def configured_checkpoint() -> str:
    """XLDEMO_CHECKPOINT (a folder or a Hub repo id) if set, else the shipped default's name."""
    return os.environ.get("XLDEMO_CHECKPOINT") or DEFAULT_CHECKPOINT.name


def checkpoint_source(name, default: str) -> str:
    """Where to load a checkpoint named in the UI from: a shipped name, the configured default, or a Hub repo
    id. Other local paths are refused: a client must not make the server read arbitrary folders."""
    if not isinstance(name, str) or not name.strip():
        raise XLDemoError("Choose a checkpoint: a shipped one, or a Hugging Face Hub repo id (owner/name).")
    name = name.strip()
    if name in shipped_checkpoints() or name == default == DEFAULT_CHECKPOINT.name:
        return str(SHIPPED / name)  # the default's full path makes a clearer error while it is missing
    if name == default:
        return name
    if REPO_ID.match(name) and ".." not in name and not Path(name).expanduser().exists():
        return name
    shipped = ", ".join(shipped_checkpoints()) or "none"
    raise XLDemoError(f"Unknown checkpoint {name!r}: choose a shipped one ({shipped}) or type a Hugging Face Hub "
                      f"repo id (owner/name).")


@lru_cache(maxsize=CACHE_SIZE)
def cached_checkpoint(source: str) -> Checkpoint:
    """The checkpoint at source, loaded once and shared read-only by every run; a failed load is not cached."""
    return load_checkpoint(source)


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
