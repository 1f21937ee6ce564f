"""Decoders of the current segment: a KV-cached step at a time, and the memory a finished segment leaves."""

import copy
import weakref
from typing import Protocol

import torch
from x_transformers import TransformerWrapper
from x_transformers.attend import Attend

from .errors import XLDemoError
from .fast import FastDecoder
from .memory import Memory, memory_after


class Decoder(Protocol):
    """What the engine asks of a decoding path: open a segment, append tokens one at a time, and hand over what
    the next segment's memory is made of."""

    name: str  # reported in Started
    mems: Memory  # the memory the current segment was opened with

    def start(self, tokens: torch.Tensor, mems: Memory) -> torch.Tensor:
        """Opens a segment with its first tokens (b, n) and the memory before it; returns the last logits (b, v)."""

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Appends one token per row (b,) to the segment; returns its logits (b, v)."""

    def segment_hiddens(self) -> list[torch.Tensor]:
        """Per attention layer, the inputs of every token of the segment so far: (b, n, d)."""

    def memory_tokens(self) -> int:
        """Hidden states per layer in the current segment's memory."""

    def attention(self) -> torch.Tensor:
        """Built with attention=True: the attention probabilities of the last query run, per attention layer
        (layers, b, h, keys), the keys laid out as details.key_positions describes."""


class GenericDecoder:
    """Any x-transformers decoder, through its own modules and KV cache. attention=True keeps x-transformers' own
    attention probabilities of the last query (a model with flash attention runs as attention_model makes it)."""

    name = "generic"

    def __init__(self, net: TransformerWrapper, attention: bool = False):
        self.net = attention_model(net) if attention else net
        self.keeps_attention = attention

    def start(self, tokens: torch.Tensor, mems) -> torch.Tensor:
        """Opens a segment with its first tokens (b, n) and the memory before it; returns the last logits (b, v)."""
        self.mems, self.tokens = mems, tokens
        logits, self.cache = self.net(tokens, mems=mems, return_intermediates=True)
        self.hiddens = [[h] for h in self.cache.hiddens]
        self._keep_attention(self.cache)
        return logits[:, -1]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Appends one token per row (b,) to the segment; returns its logits (b, v)."""
        # the wrapper embeds the whole segment (absolute positions need it) but attends only for the new token
        self.tokens = torch.cat((self.tokens, ids[:, None]), dim=-1)
        logits, self.cache = self.net(self.tokens, mems=self.mems, cache=self.cache, return_intermediates=True)
        for chunks, h in zip(self.hiddens, self.cache.hiddens):
            chunks.append(h)
        self._keep_attention(self.cache)
        return logits[:, -1]

    def segment_hiddens(self) -> list[torch.Tensor]:
        """Per attention layer, the inputs of every token of the segment so far: (b, n, d)."""
        return [torch.cat(chunks, dim=-2) for chunks in self.hiddens]

    def memory_tokens(self) -> int:
        return 0 if self.mems is None else self.mems[0].shape[-2]

    def attention(self) -> torch.Tensor:
        if not self.keeps_attention:
            raise XLDemoError("the decoder was built without attention=True: it keeps no attention probabilities")
        return self.last_attention

    def _keep_attention(self, intermediates) -> None:
        if self.keeps_attention:
            self.last_attention = torch.stack([inter.post_softmax_attn[:, :, -1]  # (b, h, keys) each
                                               for inter in intermediates.attn_intermediates])


class UncachedDecoder(GenericDecoder):
    """Any model x-transformers can run, for those whose KV cache does not reproduce the full forward (token
    shifting, memory tokens): every step reruns the segment so far with its memory, which is the teacher-forced
    pass by construction, at a cost quadratic in the segment's length."""

    name = "uncached"

    def start(self, tokens: torch.Tensor, mems) -> torch.Tensor:
        self.mems, self.tokens = mems, tokens
        return self._run()

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self.tokens = torch.cat((self.tokens, ids[:, None]), dim=-1)
        return self._run()

    def _run(self) -> torch.Tensor:
        logits, inter = self.net(self.tokens, mems=self.mems, return_intermediates=True)
        self.hiddens = inter.hiddens  # the whole segment's, rerun each step
        self._keep_attention(inter)
        return logits[:, -1]

    def segment_hiddens(self) -> list[torch.Tensor]:
        return list(self.hiddens)


DECODERS = {"fast": FastDecoder, "generic": GenericDecoder, "uncached": UncachedDecoder}
_cache_checked: "weakref.WeakKeyDictionary[TransformerWrapper, str | None]" = weakref.WeakKeyDictionary()
# net -> None (net returns its attention probabilities), a copy that does, or why there is none
_attention_checked: "weakref.WeakKeyDictionary[TransformerWrapper, TransformerWrapper | str | None]" = \
    weakref.WeakKeyDictionary()


def attention_model(net: TransformerWrapper) -> TransformerWrapper:
    """A model whose forward gives net's logits and x-transformers' own attention probabilities (post_softmax_attn):
    net itself, or, where flash attention keeps them from being returned, a copy sharing net's weights with flash
    attention off. Decided once per model by comparing logits on random tokens after a segment of memory; raises
    XLDemoError where neither is exact."""
    if net not in _attention_checked:
        _attention_checked[net] = _probe_attention(net)
    found = _attention_checked[net]
    if isinstance(found, str):
        raise XLDemoError(f"per-token details need x-transformers' attention probabilities: {found}")
    return net if found is None else found


def _probe_attention(net: TransformerWrapper) -> TransformerWrapper | str | None:
    candidate = net
    if any(module.flash for module in net.modules() if isinstance(module, Attend)):
        shared = {id(t): t for t in (*net.parameters(), *net.buffers())}  # deepcopy's memo: weights are not copied
        candidate = copy.deepcopy(net, shared)
        for module in candidate.modules():
            if isinstance(module, Attend):
                module.flash = False
    with torch.inference_mode():
        rest, mems = _probe_input(net)
        expected = net(rest, mems=mems)
        try:
            logits, inter = candidate(rest, mems=mems, return_intermediates=True)
        except Exception as e:  # x-transformers refuses some options without flash attention
            return f"with flash attention off the model fails ({type(e).__name__})"
    if any(i.post_softmax_attn is None for i in inter.attn_intermediates):
        return "x-transformers returns none for this model"
    error = (logits - expected).abs().max().item()
    if error > 1e-3 * (1 + expected.abs().max().item()):
        return f"with flash attention off its logits change by up to {error:.3g}"
    return None if candidate is net else candidate


def kv_cache_problem(net: TransformerWrapper) -> str | None:
    """None when x-transformers' KV cache gives net the logits of its full forward, else why not. Decided once per
    model, on random tokens after a segment of memory: cached and uncached logits are compared, not assumed."""
    if net not in _cache_checked:
        _cache_checked[net] = _probe_kv_cache(net)
    return _cache_checked[net]


@torch.inference_mode()
def _probe_kv_cache(net: TransformerWrapper) -> str | None:
    if not getattr(net, "can_cache_kv", True):
        return "x-transformers does not cache keys and values for it"
    rest, mems = _probe_input(net)
    expected = net(rest, mems=mems)[0]  # (n, v)
    try:
        decoder = GenericDecoder(net)
        cached = [decoder.start(rest[:, :1], mems)] + [decoder.step(rest[:, i]) for i in range(1, rest.shape[1])]
    except Exception as e:  # a cache that fails outright is as unusable as one that drifts
        return f"its KV cache fails ({type(e).__name__})"
    error = (torch.cat(cached) - expected).abs().max().item()
    if error > 1e-3 * (1 + expected.abs().max().item()):
        return f"its KV cache changes the logits by up to {error:.3g}"
    return None


def _probe_input(net: TransformerWrapper) -> tuple[torch.Tensor, Memory]:
    """A few random tokens (1, n) and the memory a random segment before them leaves: what the probes compare on."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, net.num_tokens, (1, net.max_seq_len + min(net.max_seq_len, 6)), generator=generator)
    return tokens[:, net.max_seq_len:], memory_after(net, tokens[:, :net.max_seq_len], net.max_mem_len)


def make_decoder(net: TransformerWrapper, choice: str = "auto", attention: bool = False) -> Decoder:
    """auto: the fast decoder where it supports net's configuration, else x-transformers' own modules with their
    KV cache where that cache is exact, else without it. Naming a decoder that cannot be exact for net raises
    XLDemoError saying why. attention=True: a decoder that keeps the last query's attention (attention())."""
    if choice not in ("auto", *DECODERS):
        raise XLDemoError(f"decoder must be one of auto, {', '.join(DECODERS)}, got {choice!r}")
    if choice == "auto":
        try:
            return FastDecoder(net, attention)
        except XLDemoError:
            choice = "uncached" if kv_cache_problem(net) else "generic"
    if choice == "generic" and (problem := kv_cache_problem(net)):
        raise XLDemoError(f"the generic decoder is not exact for this model: {problem}; use the uncached decoder")
    return DECODERS[choice](net, attention)
