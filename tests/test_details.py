"""Per-token details against x-transformers' own attention and logits in the segmented teacher-forced pass."""

import pytest
import torch

from conftest import tiny_checkpoint, tiny_config
from xldemo.checkpoint import build_model
from xldemo.decoders import attention_model, kv_cache_problem
from xldemo.engine import GenerationSettings, Token, generate
from xldemo.errors import XLDemoError
from xldemo.fast import unsupported_reason
from xldemo.teacher import teacher_forced_attention

L = 8  # max_seq_len of the tiny models
CONFIGS = {
    "rotary, mem = L": tiny_config(),
    "rotary, mem < L": tiny_config(mem_len=5),
    "rotary, mem > L, flash attention": tiny_config(mem_len=13, attn_flash=True),
    "rotary, mem = 2L, 3 layers, 4 heads": tiny_config(mem_len=16, depth=3, heads=4),
    "absolute positions": tiny_config(rotary=False, mem_len=5),
    "t5 rel_pos_bias": tiny_config(rel_pos_bias=True),
    "alibi, flash attention": tiny_config(alibi_pos_bias=True, attn_flash=True),
    "shift_mem_down": {**tiny_config(depth=3, mem_len=13), "shift_mem_down": 1},
    "memory key/values": tiny_config(attn_num_mem_kv=2),  # learned keys before the memory
    "memory tokens": {**tiny_config(), "num_memory_tokens": 2},  # uncached only: learned slots inside the memory
}
PROMPT_LENGTHS = [1, L - 1, L, L + 1, 2 * L, 3 * L + 3]
TOL = 1e-5


def reference_model(checkpoint):
    """The same weights with flash attention off, so that x-transformers returns its attention probabilities."""
    config = {**checkpoint.config, "attn_layers": {**checkpoint.config["attn_layers"], "attn_flash": False}}
    net = build_model(config).eval()
    net.load_state_dict(checkpoint.model.state_dict())
    return net


def random_prompt(length, seed=1):
    return torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(checkpoint, prompt, **settings) -> list[Token]:
    events = generate(checkpoint, prompt, GenerationSettings(details=True, **settings), keep_logits=True)
    return [e for e in events if isinstance(e, Token)]


def check_against_reference(tokens: list[Token], prompt: list[int], net, shift: int = 0) -> None:
    """Every figure of every token equals what the teacher-forced pass over the same tokens gives at the position
    before it. shift > 0 moves the reference's positions by that much: the guard that this check can fail."""
    logits, attention, shares = teacher_forced_attention(net, torch.tensor([prompt + [t.id for t in tokens]]))
    attention = attention.roll(shift, dims=-1)
    for token in tokens:
        query, details = token.position - 1, token.details
        log_probs = logits[0, query].log_softmax(-1)
        assert token.logprob == pytest.approx(log_probs[token.id].item(), abs=1e-4)
        chosen = log_probs[token.id]
        assert (log_probs > chosen + 1e-4).sum() <= details.rank <= (log_probs > chosen - 1e-4).sum()
        assert [lp for _, lp in details.top] == pytest.approx(log_probs.topk(5).values.tolist(), abs=1e-4)
        assert all(lp == pytest.approx(log_probs[i].item(), abs=1e-4) for i, lp in details.top)
        assert details.memory_share == pytest.approx(shares[0, query].tolist(), abs=TOL)
        weights = attention[0, query].mean(dim=0)  # (n,): over layers; NaN where not a key
        visible = weights.nan_to_num(-1.0)
        assert len(details.attended) == min(8, int((visible >= 0).sum()))
        assert [w for _, w in details.attended] == pytest.approx(visible.topk(len(details.attended)).values.tolist(),
                                                                abs=TOL)
        assert all(w == pytest.approx(visible[p].item(), abs=TOL) for p, w in details.attended), token.position


def applicable(checkpoint, decoder) -> bool:
    if decoder == "fast":
        return unsupported_reason(checkpoint.model) is None
    return decoder == "uncached" or kv_cache_problem(checkpoint.model) is None


# the decoders that cannot be exact for a configuration: the fast one implements only the standard decoder, and
# x-transformers' KV cache is not exact with memory tokens
CANNOT = {"t5 rel_pos_bias": {"fast"}, "alibi, flash attention": {"fast"}, "shift_mem_down": {"fast"},
          "memory key/values": {"fast"}, "memory tokens": {"fast", "generic"}}
CASES = [(name, decoder) for name in CONFIGS for decoder in ("fast", "generic", "uncached")
         if decoder not in CANNOT.get(name, ())]


def test_the_decoders_left_out_are_those_that_cannot_run_their_configuration():
    for name in CONFIGS:
        checkpoint = tiny_checkpoint(CONFIGS[name])
        for decoder in ("fast", "generic", "uncached"):
            assert applicable(checkpoint, decoder) == (decoder not in CANNOT.get(name, ())), (name, decoder)


@pytest.mark.parametrize("name, decoder", CASES)
def test_details_equal_x_transformers_attention_and_logits(name, decoder):
    checkpoint = tiny_checkpoint(CONFIGS[name])
    net, ranks = reference_model(checkpoint), set()
    for length in PROMPT_LENGTHS:
        prompt = random_prompt(length, seed=length)
        # sampled hot: ranks other than 0; 3L + 2 tokens cross three segment boundaries
        tokens = run(checkpoint, prompt, max_new_tokens=3 * L + 2, temperature=1.5, seed=length, decoder=decoder)
        check_against_reference(tokens, prompt, net)
        ranks |= {t.details.rank for t in tokens}
    assert len(ranks) > 2


def test_a_shifted_position_mapping_is_detected():
    checkpoint = tiny_checkpoint(CONFIGS["rotary, mem > L, flash attention"])
    prompt = random_prompt(2 * L + 3)
    tokens = run(checkpoint, prompt, max_new_tokens=2 * L, temperature=0)
    net = reference_model(checkpoint)
    check_against_reference(tokens, prompt, net)
    with pytest.raises(AssertionError):
        check_against_reference(tokens, prompt, net, shift=1)


def test_memory_share_and_memory_positions_are_exercised():
    """Guards the checks above from passing on figures that never involve memory."""
    checkpoint = tiny_checkpoint(CONFIGS["shift_mem_down"])
    tokens = run(checkpoint, random_prompt(2 * L + 3), max_new_tokens=L, temperature=0)
    assert all(0 < share < 1 for t in tokens for share in t.details.memory_share)
    queries = [t.position - 1 for t in tokens]
    assert all(any(p < q - q % L for p, _ in t.details.attended) for t, q in zip(tokens, queries))


def test_each_sample_of_a_batch_gets_its_own_details():
    checkpoint = tiny_checkpoint(CONFIGS["rotary, mem < L"])
    prompt = random_prompt(L + 3)
    tokens = run(checkpoint, prompt, max_new_tokens=2 * L, temperature=1.0, seed=3, num_samples=3)
    net = reference_model(checkpoint)
    for sample in range(3):
        check_against_reference([t for t in tokens if t.sample == sample], prompt, net)


@pytest.mark.parametrize("mem_len", [0, 3, 20])
def test_memory_length_override_names_the_positions_memory_holds(mem_len):
    checkpoint = tiny_checkpoint()
    prompt = random_prompt(2 * L + 5)
    tokens = run(checkpoint, prompt, max_new_tokens=2 * L, temperature=1.0, seed=1, mem_len=mem_len)
    config = {**checkpoint.config, "max_mem_len": max(mem_len, 1)}
    net = build_model(config).eval()  # x-transformers' own memory handling at that length
    net.load_state_dict(checkpoint.model.state_dict())
    if mem_len == 0:
        assert all(t.details.memory_share == (0.0, 0.0) for t in tokens)
        assert all(p >= t.position - 1 - (t.position - 1) % L for t in tokens for p, _ in t.details.attended)
    else:
        check_against_reference(tokens, prompt, net)


@pytest.mark.parametrize("decoder", ["fast", "generic"])
def test_details_off_leaves_tokens_and_logits_unchanged(decoder, monkeypatch):
    checkpoint = tiny_checkpoint(tiny_config(mem_len=5))
    prompt = random_prompt(L + 3)
    settings = dict(max_new_tokens=3 * L, temperature=1.0, seed=4, num_samples=2, decoder=decoder)
    on = run(checkpoint, prompt, **settings)
    monkeypatch.setattr("xldemo.fast._attention_probs", lambda *a: pytest.fail("attention computed with details off"))
    off = [e for e in generate(checkpoint, prompt, GenerationSettings(**settings), keep_logits=True)
           if isinstance(e, Token)]
    assert all(t.details is None for t in off) and all(t.details is not None for t in on)
    assert [(t.id, t.logprob) for t in on] == [(t.id, t.logprob) for t in off]
    # the fast decoder still attends through scaled_dot_product_attention: the same logits, to the bit
    assert all(torch.equal(a.logits, b.logits) for a, b in zip(on, off))


def test_flash_attention_gets_a_copy_sharing_weights_with_flash_off():
    flash = tiny_checkpoint(tiny_config(alibi_pos_bias=True, attn_flash=True)).model
    copy = attention_model(flash)
    assert copy is not flash and attention_model(flash) is copy  # decided once per model
    assert all(a is b for a, b in zip(flash.parameters(), copy.parameters()))
    plain = tiny_checkpoint(tiny_config(alibi_pos_bias=True)).model
    assert attention_model(plain) is plain


def test_a_model_without_attention_probabilities_is_refused_in_one_line(monkeypatch):
    checkpoint = tiny_checkpoint(tiny_config(rel_pos_bias=True))
    monkeypatch.setattr("xldemo.decoders._probe_attention", lambda net: "x-transformers returns none for this model")
    with pytest.raises(XLDemoError, match="attention probabilities") as error:
        list(generate(checkpoint, [1, 2], GenerationSettings(details=True)))
    assert "\n" not in str(error.value)
