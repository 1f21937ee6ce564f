"""The fast decoder against x-transformers' own modules and the segmented teacher-forced pass."""

import pytest
import torch

from conftest import tiny_checkpoint, tiny_config
from xldemo.checkpoint import build_model
from xldemo.decoders import GenericDecoder, make_decoder
from xldemo.engine import GenerationSettings, Started, Token, generate
from xldemo.errors import XLDemoError
from xldemo.fast import FastDecoder, unsupported_reason
from xldemo.memory import memory_after, next_memory
from xldemo.teacher import teacher_forced_logits

SUPPORTED = {
    "rotary, mem = L": tiny_config(),
    "rotary, mem < L": tiny_config(mem_len=3),
    "rotary, mem > L, not a multiple": tiny_config(seq_len=4, mem_len=11),
    "absolute positions": tiny_config(rotary=False, mem_len=5),
    "3 heads of 8, partial rotary, 3 layers": tiny_config(dim=24, heads=3, attn_dim_head=8, rotary_emb_dim=4, depth=3),
    "2 heads of 8 in dim 32": tiny_config(heads=2, attn_dim_head=8, mem_len=4),
    "one head (no output projection)": tiny_config(heads=1, attn_dim_head=32, mem_len=6),
    "no biases, no final norm, no unit offset, no flash": tiny_config(
        ff_no_bias=True, pre_norm_has_final_norm=False, norm_add_unit_offset=False, attn_flash=False, ff_mult=2),
}
UNSUPPORTED = {
    "t5 rel_pos_bias": (tiny_config(rel_pos_bias=True), "rel_pos"),
    "alibi": (tiny_config(alibi_pos_bias=True), "rel_pos"),
    "shift_mem_down": ({**tiny_config(depth=3, mem_len=13), "shift_mem_down": 1}, "shift_mem_down"),
    "qk_norm": (tiny_config(attn_qk_norm=True), "qk_norm"),
    "ff_glu": (tiny_config(ff_glu=True), "feed-forward"),
    "memory key/values": (tiny_config(attn_num_mem_kv=2), "mem_k"),
    "rmsnorm": (tiny_config(use_rmsnorm=True), "RMSNorm"),
    "xpos": (tiny_config(rotary_xpos=True), "scale"),
    "grouped keys": (tiny_config(heads=2, attn_kv_heads=1), "to_k"),
    "tied embedding": ({**tiny_config(), "tie_embedding": True}, "to_logits"),
    "memory tokens": ({**tiny_config(), "num_memory_tokens": 2}, "memory_tokens"),
}


def drive(decoder, net, tokens: torch.Tensor, prompt_len: int, mem_len: int) -> torch.Tensor:
    """Feeds tokens (b, t) as the engine does (warm-up through net, then start / step, memory at each boundary);
    returns the logits that predict tokens[prompt_len:] and the one after: (b, t - prompt_len + 1, v)."""
    return decode(decoder, tokens, prompt_len, net.max_seq_len, mem_len, warm_up(net, tokens, prompt_len, mem_len))


def warm_up(net, tokens: torch.Tensor, prompt_len: int, mem_len: int):
    """The memory the prompt's complete segments before its last one leave."""
    seg_len = net.max_seq_len
    return memory_after(net, tokens[:, :(prompt_len - 1) // seg_len * seg_len], mem_len)


def decode(decoder, tokens: torch.Tensor, prompt_len: int, seg_len: int, mem_len: int, mems) -> torch.Tensor:
    """drive's decoding, from the warm-up's memory on."""
    current = (prompt_len - 1) // seg_len
    logits = [decoder.start(tokens[:, current * seg_len:prompt_len], mems)]
    for position in range(prompt_len, tokens.shape[1]):
        if position % seg_len == 0:
            mems = next_memory(decoder.mems, decoder.segment_hiddens(), mem_len)
            logits.append(decoder.start(tokens[:, position:position + 1], mems))
        else:
            logits.append(decoder.step(tokens[:, position]))
    return torch.stack(logits, dim=1)


def random_tokens(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", SUPPORTED)
def test_logits_equal_generic_and_teacher_forced(name, monkeypatch):
    net = tiny_checkpoint(SUPPORTED[name]).model
    seg_len = net.max_seq_len
    for prompt_len in (1, seg_len - 1, seg_len, seg_len + 1, 2 * seg_len, 3 * seg_len + 3):
        tokens = random_tokens(2, prompt_len + 3 * seg_len + 2, seed=prompt_len)  # two different rows
        reference = teacher_forced_logits(net, tokens)[:, prompt_len - 1:]
        decoder, mems = FastDecoder(net), warm_up(net, tokens, prompt_len, net.max_mem_len)
        with monkeypatch.context() as patch:  # the fast path computes every logit itself, never through net
            patch.setattr(net.attn_layers, "forward", lambda *a, **k: pytest.fail("the fast decoder called net"))
            patch.setattr(net, "forward", lambda *a, **k: pytest.fail("the fast decoder called net"))
            fast = decode(decoder, tokens, prompt_len, seg_len, net.max_mem_len, mems)
        generic = drive(GenericDecoder(net), net, tokens, prompt_len, net.max_mem_len)
        torch.testing.assert_close(fast, reference, atol=1e-4, rtol=0)
        torch.testing.assert_close(fast, generic, atol=1e-4, rtol=0)
        assert torch.equal(fast.argmax(-1), reference.argmax(-1)), f"prompt length {prompt_len}"


@pytest.mark.parametrize("mem_len", [0, 2, 8, 20])
def test_memory_length_override_equals_generic(mem_len):
    net = tiny_checkpoint(tiny_config(mem_len=8)).model
    tokens = random_tokens(2, 5 * 8 + 3, seed=mem_len)
    fast = drive(FastDecoder(net), net, tokens, 2 * 8 + 5, mem_len)
    generic = drive(GenericDecoder(net), net, tokens, 2 * 8 + 5, mem_len)
    torch.testing.assert_close(fast, generic, atol=1e-4, rtol=0)
    if mem_len == 0:
        torch.testing.assert_close(fast, teacher_forced_logits(net, tokens, memory=False)[:, 2 * 8 + 4:],
                                   atol=1e-4, rtol=0)


def test_memory_it_left_itself_is_carried_not_projected_again(monkeypatch):
    net = tiny_checkpoint().model
    decoder, tokens = FastDecoder(net), random_tokens(1, 8 + 3, seed=5)
    decoder.start(tokens[:, :8], None)
    mems = next_memory(decoder.mems, decoder.segment_hiddens(), 8)
    monkeypatch.setattr(decoder, "_project_memory", lambda mems: pytest.fail("projected the carried memory again"))
    logits = [decoder.start(tokens[:, 8:9], mems), decoder.step(tokens[:, 9])]
    torch.testing.assert_close(torch.stack(logits, dim=1), teacher_forced_logits(net, tokens)[:, 8:10],
                               atol=1e-4, rtol=0)


def test_segment_hiddens_stay_valid_after_the_decoder_moves_on():
    net = tiny_checkpoint(tiny_config(mem_len=6)).model
    decoder, tokens = FastDecoder(net), random_tokens(1, 3 * 8, seed=6)
    decoder.start(tokens[:, :8], None)
    for segment in (1, 2):  # the second time round, the buffers are reused
        hiddens = decoder.segment_hiddens()
        kept = [h.clone() for h in hiddens]
        decoder.start(tokens[:, 8 * segment:8 * segment + 1], next_memory(decoder.mems, hiddens, 6))
        for position in range(8 * segment + 1, 8 * segment + 8):
            decoder.step(tokens[:, position])
        assert all(torch.equal(h, k) for h, k in zip(hiddens, kept)), f"segment {segment}"


def test_engine_reports_the_fast_path_and_samples_what_the_generic_path_samples():
    checkpoint = tiny_checkpoint(tiny_config(mem_len=5))
    prompt = random_tokens(1, 2 * 8 + 3, seed=9)[0].tolist()
    runs = {}
    for decoder in ("fast", "generic"):
        settings = GenerationSettings(max_new_tokens=3 * 8, temperature=1.0, seed=7, num_samples=2, decoder=decoder)
        events = list(generate(checkpoint, prompt, settings, keep_logits=True))
        assert events[0].decoder == decoder
        runs[decoder] = [e for e in events if isinstance(e, Token)]
    assert [(t.id, t.sample) for t in runs["fast"]] == [(t.id, t.sample) for t in runs["generic"]]
    torch.testing.assert_close(torch.stack([t.logits for t in runs["fast"]]),
                               torch.stack([t.logits for t in runs["generic"]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", SUPPORTED)
def test_auto_picks_fast_where_supported(name):
    net = tiny_checkpoint(SUPPORTED[name]).model
    assert unsupported_reason(net) is None
    assert make_decoder(net, "auto").name == "fast"
    assert make_decoder(net, "generic").name == "generic"


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_falls_back_to_generic_and_fast_says_why(name):
    config, word = UNSUPPORTED[name]
    net = build_model(config).eval()
    # memory tokens rule out x-transformers' KV cache too: auto then decodes without one
    assert make_decoder(net, "auto").name == ("uncached" if name == "memory tokens" else "generic")
    with pytest.raises(XLDemoError) as error:
        make_decoder(net, "fast")
    message = str(error.value)
    assert word in message and "\n" not in message


def test_training_mode_and_other_dtypes_are_not_supported():
    net = build_model(tiny_config()).train()
    assert make_decoder(net, "auto").name == "generic"
    assert "training" in unsupported_reason(net)
    assert "bfloat16" in unsupported_reason(net.eval().bfloat16())


def test_segments_longer_than_max_seq_len_are_refused():
    net = tiny_checkpoint().model
    decoder = FastDecoder(net)
    with pytest.raises(XLDemoError):
        decoder.start(random_tokens(1, 9, seed=0), None)
    decoder.start(random_tokens(1, 8, seed=0), None)
    with pytest.raises(XLDemoError):
        decoder.step(torch.tensor([1]))


def test_engine_started_event_names_the_path():
    events = generate(tiny_checkpoint(tiny_config(rel_pos_bias=True)), [1, 2, 3], GenerationSettings(max_new_tokens=1))
    assert next(e for e in events if isinstance(e, Started)).decoder == "generic"
