"""The fence around visitors' Hub repo ids: refused unless the operator allows them, then sized up from config.json
and the Hub's file metadata before any weights come, with messages that name the repo and never a server path."""

import json
import re
import time
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import HfApi, constants

from test_checkpoint import fake_hub_cache
from xldemo.bench import peak_rss, reset_peak_rss
from xldemo.checkpoint import build_model, parameter_count
from xldemo.errors import XLDemoError
from xldemo.web import sources

# about 1.2B parameters: x-transformers would take 20 s and 4.8 GB to build it
HUGE = {"num_tokens": 256, "max_seq_len": 256, "max_mem_len": 256,
        "attn_layers": {"dim": 4096, "depth": 7, "heads": 32, "rotary_pos_emb": True}}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub reached through a cache of our making, whose file metadata says what files["sizes"] says; records what
    was asked of it."""
    cache = fake_hub_cache(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    record = {"sizes": {"config.json": 300, "model.safetensors": 200_000}, "asked": [], "cache": cache}

    def paths_info(self, repo_id, paths, revision=None, **kwargs):
        record["asked"].append(("paths_info", repo_id))
        return [SimpleNamespace(path=p, size=record["sizes"][p]) for p in paths if p in record["sizes"]]

    monkeypatch.setattr(HfApi, "get_paths_info", paths_info)
    sources.cached_checkpoint.cache_clear()
    yield record
    sources.cached_checkpoint.cache_clear()


def hub_config(hub, repo: str, config: dict) -> None:
    """config.json of repo in the fake cache, and nothing else."""
    snapshot = hub["cache"] / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)


def test_hub_ids_are_refused_unless_the_operator_allows_them(monkeypatch):
    monkeypatch.delenv("XLDEMO_ALLOWED_REPOS", raising=False)
    with pytest.raises(XLDemoError, match="does not load 'someone/tiny-xl' from the Hugging Face Hub"):
        sources.checkpoint_source("someone/tiny-xl", "the/default")
    assert sources.checkpoint_source("the/default", "the/default") == "the/default"  # the operator's own
    monkeypatch.setenv("XLDEMO_ALLOWED_REPOS", "other/one, someone/tiny-xl")
    assert sources.checkpoint_source("someone/tiny-xl", "the/default") == "someone/tiny-xl"
    with pytest.raises(XLDemoError, match="does not load"):
        sources.checkpoint_source("someone/else", "the/default")
    monkeypatch.setenv("XLDEMO_ALLOWED_REPOS", "*")
    assert sources.checkpoint_source("someone/else", "the/default") == "someone/else"


def test_an_allowed_repo_within_the_limits_loads_after_its_size_is_read(hub):
    assert sources.cached_checkpoint("someone/tiny-xl").max_seq_len == 8
    assert hub["asked"] == [("paths_info", "someone/tiny-xl")]


def test_a_huge_config_is_refused_at_once_without_building_it(hub, monkeypatch):
    hub_config(hub, "someone/huge-xl", HUGE)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("fetched the weights"))
    before = reset_peak_rss()
    began = time.perf_counter()
    with pytest.raises(XLDemoError) as error:
        sources.cached_checkpoint("someone/huge-xl")
    seconds, grown = time.perf_counter() - began, peak_rss() - before
    message = str(error.value)
    assert re.search(r"'someone/huge-xl' has 1,\d{3}\.\dM parameters; this server loads models of at most 100\.0M",
                     message)
    assert seconds < 2 and grown < 50 * 2**20, (seconds, grown)
    assert str(hub["cache"]) not in message and "\n" not in message
    assert hub["asked"] == []  # refused before the file metadata was asked for


def test_the_download_size_is_checked_before_downloading(hub, monkeypatch):
    hub["sizes"]["model.safetensors"] = 3 * 2**30
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("fetched the weights"))
    with pytest.raises(XLDemoError, match="'someone/tiny-xl' is 3,072 MB to download; this server downloads at most "
                                          "512 MB"):
        sources.cached_checkpoint("someone/tiny-xl")
    monkeypatch.setenv("XLDEMO_MAX_DOWNLOAD_MB", "4096")
    monkeypatch.setenv("XLDEMO_MAX_PARAMETERS", "1000")
    with pytest.raises(XLDemoError, match="at most 0.0M"):  # the tiny model's 60k parameters are now too many
        sources.cached_checkpoint("someone/tiny-xl")


def test_a_hub_repos_errors_name_the_repo_not_the_servers_cache(hub):
    hub_config(hub, "someone/no-weights", build_model_config())
    with pytest.raises(XLDemoError) as error:
        sources.cached_checkpoint("someone/no-weights")
    assert "someone/no-weights (Hugging Face Hub): no model.safetensors" in str(error.value)
    assert str(hub["cache"]) not in str(error.value)
    with pytest.raises(XLDemoError) as error:
        sources.cached_checkpoint("someone/not-there")
    assert "'someone/not-there'" in str(error.value) and str(hub["cache"]) not in str(error.value)


def test_a_hub_config_that_is_no_json_is_told_by_the_repos_name(hub):
    hub_config(hub, "someone/garbled", {})
    next(hub["cache"].glob("models--someone--garbled/snapshots/*/config.json")).write_text("{oops")
    with pytest.raises(XLDemoError) as error:
        sources.cached_checkpoint("someone/garbled")
    assert "checkpoint 'someone/garbled': config.json: not valid JSON" in str(error.value)
    assert str(hub["cache"]) not in str(error.value) and hub["asked"] == []  # refused before the file listing


def test_the_parameter_count_is_the_built_models():
    config = build_model_config()
    assert parameter_count(config) == sum(p.numel() for p in build_model(config).parameters())
    assert 1.1e9 < parameter_count(HUGE) < 1.3e9


def build_model_config() -> dict:
    return {"num_tokens": 256, "max_seq_len": 8, "max_mem_len": 8,
            "attn_layers": {"dim": 32, "depth": 2, "heads": 2, "rotary_pos_emb": True}}
