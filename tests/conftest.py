"""Shared test helpers: tiny random XL models, the app served on one of them, and no network."""

import os
import re
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from xldemo.checkpoint import Checkpoint, build_model, save_checkpoint
from xldemo.engine import Finished, Token, WarmupProgress
from xldemo.tokenizer import ByteTokenizer

torch.set_num_threads(1)  # tiny models: threads only add synchronisation

# the app's tiny checkpoint: 16-token segments, memory of two segments
APP_CONFIG = {"num_tokens": 256, "max_seq_len": 16, "max_mem_len": 32,
              "attn_layers": {"dim": 32, "depth": 2, "heads": 2, "rotary_pos_emb": True}}


def pytest_configure(config):
    # nothing in the tests may reach outside hosts; set before any test module imports gradio or huggingface_hub
    os.environ.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1")


def tiny_config(seq_len=8, mem_len=8, rotary=True, **attn_layers) -> dict:
    """rotary=False leaves the positions to absolute embeddings, or to a bias named in attn_layers."""
    attn = {"dim": 32, "depth": 2, "heads": 2, **attn_layers}
    if rotary and not any(k in attn for k in ("rel_pos_bias", "alibi_pos_bias")):
        attn["rotary_pos_emb"] = True
    return {"num_tokens": 256, "max_seq_len": seq_len, "max_mem_len": mem_len, "attn_layers": attn}


def tiny_checkpoint(config: dict | None = None, seed: int = 0) -> Checkpoint:
    config = config or tiny_config()
    torch.manual_seed(seed)
    model = build_model(config).eval()
    # random init leaves near-uniform logits; sharpen them so greedy argmax is far from ties
    with torch.no_grad():
        model.to_logits.weight.mul_(8.0)
    return Checkpoint(model, config, ByteTokenizer(), "tiny")


def byte_level_bpe(text: str, vocab_size: int = 280):
    """A byte-level BPE trained on text as GPT-2 builds one: characters outside its merges take several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tokenizer


@pytest.fixture
def checkpoint() -> Checkpoint:
    return tiny_checkpoint()


# the app, served in this process on 127.0.0.1

@pytest.fixture(scope="session")
def app_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(APP_CONFIG)
    with torch.no_grad():
        model.to_logits.weight.mul_(4.0)  # a random model this sure of itself samples less uniform bytes
    return save_checkpoint(model, APP_CONFIG, tmp_path_factory.mktemp("tiny-xl"))


@pytest.fixture(scope="session")
def app_url(app_folder):
    from xldemo.web.layout import build_demo, launch_options
    from xldemo.web.local import free_port

    demo = build_demo(str(app_folder), concurrency=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def app_client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False, analytics_enabled=False)


def watch_runs(monkeypatch, seconds_per_step: float = 0.0) -> dict:
    """Watches the app's engine runs: how many are live at once, how many streams the server counted meanwhile,
    and how each ended ("finished", or "closed" before its end). seconds_per_step slows each token and each warm-up
    segment to a big model's pace."""
    from xldemo.web import view

    # most_streams: the most streams the server's update budget counted while a run was live
    record = {"live": 0, "most_live": 0, "most_streams": 0, "ended": [], "lock": threading.Lock()}
    source = view.generate  # the app's own, the shared batch included

    def watched(*args, **kwargs):
        events = source(*args, **kwargs)

        def run():
            with record["lock"]:
                record["live"] += 1
                record["most_live"] = max(record["most_live"], record["live"])
            how = "closed"
            try:
                for event in events:
                    record["most_streams"] = max(record["most_streams"], view.TRAFFIC.streams)
                    if isinstance(event, Finished):
                        how = "finished"
                    elif isinstance(event, (Token, WarmupProgress)):
                        time.sleep(seconds_per_step)
                    yield event
            finally:
                events.close()
                with record["lock"]:
                    record["live"] -= 1
                    record["ended"].append(how)
        return run()

    monkeypatch.setattr(view, "generate", watched)
    return record


@pytest.fixture
def runs(monkeypatch):
    return watch_runs(monkeypatch)


# reading the app's HTML as a browser would

class _Text(HTMLParser):
    """The text of an HTML fragment, entities decoded, leaving out the elements whose class starts with one of
    skip (segment labels, fold lines)."""

    def __init__(self, skip: tuple[str, ...]):
        super().__init__(convert_charrefs=True)
        self.skip, self.stack, self.parts = skip, [], []

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        inside_skipped = bool(self.stack) and self.stack[-1]
        self.stack.append(inside_skipped or any(c.startswith(self.skip) for c in classes))

    def handle_endtag(self, tag):
        self.stack.pop()

    def handle_data(self, data):
        if not (self.stack and self.stack[-1]):
            self.parts.append(data)


def visible_text(html: str) -> str:
    """The text a browser shows, labels and fold lines left out."""
    parser = _Text(("xl-label", "xl-fold"))
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


def labels(html: str) -> list[int]:
    """The segment numbers of the labels, in order."""
    return [int(n) for n in re.findall(r'<span class="xl-label[^"]*" data-segment="(\d+)">', html)]


def generated_text(html: str) -> str:
    """The text of the generated spans only."""
    return visible_text("".join(re.findall(r'<span class="xl-generated[^"]*">[^<]*</span>', html)))
