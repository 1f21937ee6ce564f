"""Shared test helpers: tiny random XL models, and no network."""

import os

# before anything imports gradio or huggingface_hub: nothing in the tests may reach outside hosts
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from xldemo.checkpoint import Checkpoint, build_model  # noqa: E402
from xldemo.tokenizer import ByteTokenizer  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads only add synchronisation


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


@pytest.fixture
def checkpoint() -> Checkpoint:
    return tiny_checkpoint()
