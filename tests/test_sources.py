"""Which checkpoints the app serves, and its cache of loaded ones."""

import pytest

from conftest import tiny_checkpoint
from xldemo.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from xldemo.errors import XLDemoError
from xldemo.web import sources


def test_only_shipped_checkpoints_the_default_and_allowed_hub_ids_are_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("XLDEMO_ALLOWED_REPOS", "*")  # tests/test_hub_fence.py tests the fence itself
    default = str(tmp_path)
    assert sources.checkpoint_source(default, default) == default
    assert sources.checkpoint_source("someone/some-xl", default) == "someone/some-xl"
    shipped = DEFAULT_CHECKPOINT.name  # named by its folder, present or not
    assert sources.checkpoint_source(shipped, shipped) == str(DEFAULT_CHECKPOINT)
    for name in ("/etc", "tests", "../x/y", "", None, 3):
        with pytest.raises(XLDemoError, match="checkpoint"):
            sources.checkpoint_source(name, default)


def test_a_checkpoint_is_loaded_once_and_the_least_recent_dropped(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(sources, "load_checkpoint", lambda source: loads.append(source) or object())
    sources.cached_checkpoint.cache_clear()
    try:
        first = sources.cached_checkpoint("a")
        assert sources.cached_checkpoint("a") is first and loads == ["a"]
        sources.cached_checkpoint("b")
        sources.cached_checkpoint("c")  # beyond CACHE_SIZE: "a" goes
        sources.cached_checkpoint("a")
        assert loads == ["a", "b", "c", "a"]
    finally:
        sources.cached_checkpoint.cache_clear()


def test_a_failed_load_is_not_remembered(tmp_path):
    sources.cached_checkpoint.cache_clear()
    folder = tmp_path / "later"
    with pytest.raises(XLDemoError):
        sources.cached_checkpoint(str(folder))
    checkpoint = tiny_checkpoint()
    save_checkpoint(checkpoint.model, checkpoint.config, folder)
    assert sources.cached_checkpoint(str(folder)).max_seq_len == checkpoint.max_seq_len
    sources.cached_checkpoint.cache_clear()


def test_the_memory_slider_reads_the_default_config_without_weights(tmp_path):
    checkpoint = tiny_checkpoint()
    save_checkpoint(checkpoint.model, checkpoint.config, tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").unlink()
    assert sources.default_max_mem_len(str(tmp_path / "ck"), 99) == checkpoint.max_mem_len
    assert sources.default_max_mem_len("someone/on-the-hub", 99) == 99
