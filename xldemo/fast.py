"""The fast decoder: x-transformers' standard XL decoder as plain torch ops over preallocated buffers."""

from dataclasses import dataclass
from functools import partial
from types import BuiltinFunctionType, FunctionType

import torch
import torch.nn.functional as F
from torch import nn
from x_transformers import Decoder, TransformerWrapper
from x_transformers.x_transformers import AbsolutePositionalEmbedding, LayerNorm

from .errors import XLDemoError


def unsupported_reason(net: TransformerWrapper) -> str | None:
    """None when net is, module for module and setting for setting, what x-transformers builds from the few
    options the fast decoder implements; else what differs, in a few words."""
    if not isinstance(net, TransformerWrapper):
        return f"it is a {type(net).__name__}, not a TransformerWrapper"
    if net.training:
        return "the model is in training mode"
    dtypes = {p.dtype for p in net.parameters()}
    if dtypes != {torch.float32}:
        return f"its weights are {', '.join(sorted(str(t).removeprefix('torch.') for t in dtypes))}, not float32"
    try:
        wrapper, layers = _options(net)
    except (AttributeError, IndexError, KeyError, TypeError, ZeroDivisionError):
        return "its layers are not x-transformers' plain attention and feed-forward blocks"
    try:
        with torch.device("meta"):  # only the module tree is compared: no weights, no time
            template = TransformerWrapper(attn_layers=Decoder(**layers, verbose=False), **wrapper).eval()
    except Exception:  # x-transformers rejects the options read off net: net is something else
        return "its layers are not x-transformers' plain attention and feed-forward blocks"
    return _first_difference(net, template)


def _options(net: TransformerWrapper) -> tuple[dict, dict]:
    """The TransformerWrapper and Decoder arguments the fast decoder implements, read off net's modules."""
    layers = net.attn_layers
    attn, ff = layers.layers[0][1], layers.layers[1][1]
    ff_in, ff_out = ff.ff[0][0], ff.ff[-1]
    rotary = layers.rotary_pos_emb
    dim = layers.dim
    wrapper = dict(num_tokens=net.token_emb.emb.num_embeddings, max_seq_len=net.max_seq_len,
                   max_mem_len=net.max_mem_len, logits_dim=getattr(net.to_logits, "out_features", net.num_tokens),
                   use_abs_pos_emb=isinstance(net.pos_emb, AbsolutePositionalEmbedding), emb_dropout=net.emb_dropout.p)
    options = dict(dim=dim, depth=layers.depth, heads=layers.attn_heads, attn_dim_head=layers.attn_dim_head,
                   attn_flash=attn.attend.flash, attn_dropout=attn.attend.dropout, ff_mult=ff_in.out_features / dim,
                   ff_no_bias=ff_out.bias is None, ff_dropout=ff.ff[1].p, layer_dropout=layers.layer_dropouts[0],
                   norm_add_unit_offset=layers.layers[0][0][0].unit_offset,
                   pre_norm_has_final_norm=isinstance(layers.final_norm, LayerNorm),
                   rotary_pos_emb=rotary is not None)
    if rotary is not None:
        options.update(rotary_emb_dim=2 * rotary.inv_freq.numel(), rotary_interpolation_factor=rotary.interpolation_factor)
    return wrapper, options


# what every nn.Module holds for torch itself (hooks, parameter tables): not part of a configuration
_TORCH_KEYS = frozenset(vars(nn.Module())) - {"training"}


def _first_difference(net: nn.Module, template: nn.Module) -> str | None:
    modules, expected = dict(net.named_modules()), dict(template.named_modules())
    for name, module in modules.items():
        if name not in expected:
            return f"{name} ({type(module).__name__}) is not part of any configuration the fast path implements"
        if type(module) is not type(expected[name]):
            return f"{name or 'the model'} is a {type(module).__name__}, the fast path implements " \
                   f"{type(expected[name]).__name__}"
    for name, module in expected.items():
        if name not in modules:
            return f"it lacks {name} ({type(module).__name__})"
    for kind in ("parameters", "buffers"):
        mine, theirs = (dict(getattr(m, "named_" + kind)()) for m in (net, template))
        for name in sorted(mine.keys() | theirs.keys()):
            if name not in mine or name not in theirs or mine[name].shape != theirs[name].shape:
                return f"{kind[:-1]} {name} is not one the fast path implements"
    for name, module in modules.items():
        mine, theirs = _settings(module), _settings(expected[name])
        for key in sorted(mine.keys() | theirs.keys()):
            if key not in mine or key not in theirs or not _same(mine[key], theirs[key]):
                return f"{name + '.' if name else ''}{key} is {mine.get(key, 'missing')!r}, the fast path implements " \
                       f"{theirs.get(key, 'its absence')!r}"
    return None


def _settings(module: nn.Module) -> dict:
    return {k: v for k, v in vars(module).items() if k not in _TORCH_KEYS}


def _same(a, b) -> bool:
    """Equal as settings: plain values by value, functions by identity, partials and small objects field by field."""
    if type(a) is not type(b):
        return False
    if isinstance(a, partial):
        return a.func is b.func and _same(a.args, b.args) and _same(a.keywords, b.keywords)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape
    if isinstance(a, (FunctionType, BuiltinFunctionType)):
        return a is b
    if hasattr(a, "__dict__"):  # helper objects such as x-transformers' always(0)
        return _same(vars(a), vars(b))
    return a == b


@dataclass(frozen=True)
class Block:
    """One attention layer and the feed-forward layer after it, as the tensors the fast path multiplies by:
    matrices as (in, out) views of x-transformers' weights, so that x @ w is the layer."""
    attn_norm: torch.Tensor  # (d,) LayerNorm gain, unit offset included
    qkv: torch.Tensor  # (d, 3 * h * dh): to_q, to_k and to_v side by side, so one matmul projects all three
    out: torch.Tensor | None  # (h * dh, d); None where x-transformers projects nothing (one head)
    ff_norm: torch.Tensor  # (d,)
    ff_in: torch.Tensor  # (d, f)
    ff_in_bias: torch.Tensor  # (f,) zeros where the layer has none
    ff_out: torch.Tensor  # (f, d)
    ff_out_bias: torch.Tensor  # (d,)


class FastDecoder:
    """The decoder interface of decoders.GenericDecoder for the configurations unsupported_reason accepts. Keys,
    values and layer inputs live in buffers allocated once per batch size; the memory's keys and values are carried
    over from the segment that produced it. Reads net's weights when built: build a new one after changing them.
    attention=True also keeps the last query run, from which attention() computes its attention probabilities."""

    name = "fast"

    def __init__(self, net: TransformerWrapper, attention: bool = False):
        reason = unsupported_reason(net)
        if reason is not None:
            raise XLDemoError(f"the fast decoder does not support this model: {reason}")
        layers = net.attn_layers
        self.heads, self.dim_head, self.seg_len = layers.attn_heads, layers.attn_dim_head, net.max_seq_len
        self.embed = net.token_emb.emb.weight.detach()  # (v, d)
        self.pos_embed = (net.pos_emb.emb.weight.detach() * net.pos_emb.scale  # (l, d)
                          if isinstance(net.pos_emb, AbsolutePositionalEmbedding) else None)
        self.rotary = layers.rotary_pos_emb
        self.blocks = [_block(attn, ff) for (attn, ff) in zip(layers.layers[0::2], layers.layers[1::2])]
        self.final_norm = _gain(layers.final_norm) if isinstance(layers.final_norm, LayerNorm) else None
        self.to_logits = net.to_logits.weight.detach()  # (v, d)
        self.mems, self.hidden = None, None
        self.memory_len = self.length = 0
        self.keeps_attention, self.queries = attention, None

    @torch.inference_mode()
    def start(self, tokens: torch.Tensor, mems) -> torch.Tensor:
        """Opens a segment with its first tokens (b, n) and the memory before it; returns the last logits (b, v)."""
        b, n = tokens.shape
        if not 1 <= n <= self.seg_len:
            raise XLDemoError(f"a segment starts with 1 to {self.seg_len} tokens, got {n}")
        m = 0 if mems is None else mems[0].shape[-2]
        carried = self._carried(mems, b)
        self._allocate(b, m + self.seg_len)
        self.mems, self.memory_len, self.length = mems, m, m
        if self.rotary is not None:
            slots = torch.arange(-m, self.hidden.shape[2] - m, device=self.embed.device)  # positions in the segment
            angles = self.rotary(slots)[0][0, :, ::2]  # (slots, r / 2): x-transformers' own angles, to the bit
            self.rotation = torch.complex(angles.cos(), angles.sin())
        if m:
            if carried is None:
                self._project_memory(mems)
            else:
                for buffer, carry in zip((self.hidden, self.raw_keys, self.kv[:, :, 1]), carried):
                    buffer[..., :m, :] = carry
            keys = self.kv[:, :, 0, :, :m]  # (depth, b, h, m, dh)
            keys.copy_(self.raw_keys[..., :m, :])
            if self.rotary is not None:
                _rotate(keys, self.rotation[:m])
        return self._prefill(tokens)

    @torch.inference_mode()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Appends one token per row (b,) to the segment; returns its logits (b, v)."""
        if self.length - self.memory_len >= self.seg_len:
            raise XLDemoError(f"a segment holds at most {self.seg_len} tokens: start the next one")
        p = self.length
        x = F.embedding(ids, self.embed)  # (b, d)
        if self.pos_embed is not None:
            x = x + self.pos_embed[p - self.memory_len]
        # this slot's views of every layer's buffers, taken once for all layers
        layers = zip(self.blocks, self.hidden[:, :, p].unbind(0), self.raw_keys[:, :, :, p].unbind(0),
                     self.kv[:, :, :, :, p].unbind(0), self.kv[:, :, 0, :, :p + 1].unbind(0),
                     self.kv[:, :, 1, :, :p + 1].unbind(0),  # keys, values (b, h, p + 1, dh)
                     (None,) * len(self.blocks) if self.queries is None else self.queries.unbind(0))
        rotation = None if self.rotary is None else self.rotation[p]  # (r / 2,)
        q, k, kv, qk = self.step_views
        for block, hidden, raw_keys, slot, keys, values, query in layers:
            hidden.copy_(x)
            torch.mm(F.layer_norm(x, x.shape[-1:], block.attn_norm), block.qkv, out=self.step_qkv)
            raw_keys.copy_(k)
            if rotation is not None:
                qk.mul_(rotation)
            slot.copy_(kv)
            if query is not None:
                query.copy_(q)
            out = F.scaled_dot_product_attention(q, keys, values).flatten(1)  # (b, h * dh)
            x = x + out if block.out is None else torch.addmm(x, out, block.out)
            h = F.layer_norm(x, x.shape[-1:], block.ff_norm)
            x = x + torch.addmm(block.ff_out_bias, F.gelu(torch.addmm(block.ff_in_bias, h, block.ff_in)), block.ff_out)
        self.length = p + 1
        return self._logits(x)

    def segment_hiddens(self) -> list[torch.Tensor]:
        """Per attention layer, the inputs of every token of the segment so far: (b, n, d)."""
        return list(self.hidden[:, :, self.memory_len:self.length].clone().unbind(0))

    def memory_tokens(self) -> int:
        return self.memory_len

    def attention(self) -> torch.Tensor:
        """The attention probabilities of the last query run, per layer: (layers, b, h, keys), the keys being the
        memory, then the segment up to that query. Computed here, all layers at once, from the query and keys that
        scaled_dot_product_attention took, since it does not return them: the decoding path itself is unchanged."""
        if self.queries is None:
            raise XLDemoError("the decoder was built without attention=True: it keeps no attention probabilities")
        return _attention_probs(self.queries, self.kv[:, :, 0, :, :self.length])

    def _prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Runs ids (b, n) at the next n slots, each attending to the memory and the segment up to itself."""
        b, n = ids.shape
        begin, end = self.length, self.length + n
        x = F.embedding(ids, self.embed)  # (b, n, d)
        if self.pos_embed is not None:
            x = x + self.pos_embed[:n]  # a segment's first tokens: positions 0 to n - 1
        rotation = None if self.rotary is None else self.rotation[begin:end]  # (n, r / 2)
        mask = None if n == 1 else torch.ones(n, end, dtype=torch.bool, device=x.device).tril(begin)  # (n, end)
        for i, block in enumerate(self.blocks):
            self.hidden[i, :, begin:end] = x
            h = F.layer_norm(x, x.shape[-1:], block.attn_norm)
            q, k, v = (h @ block.qkv).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
            self.raw_keys[i, :, :, begin:end] = k  # (b, h, n, dh)
            if rotation is not None:
                _rotate(q, rotation)
                _rotate(k, rotation)
            self.kv[i, :, 0, :, begin:end] = k
            self.kv[i, :, 1, :, begin:end] = v
            out = F.scaled_dot_product_attention(q, self.kv[i, :, 0, :, :end], self.kv[i, :, 1, :, :end],
                                                 attn_mask=mask)  # (b, h, n, dh)
            if self.queries is not None:  # the last query sees every key: attention() needs no mask
                self.queries[i] = q[:, :, -1:]
            out = out.transpose(1, 2).flatten(2)  # (b, n, h * dh)
            x = x + (out if block.out is None else out @ block.out)
            h = F.layer_norm(x, x.shape[-1:], block.ff_norm)
            x = x + (F.gelu(h @ block.ff_in + block.ff_in_bias) @ block.ff_out + block.ff_out_bias)
        self.length = end
        return self._logits(x[:, -1])

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d) -> (b, v)"""
        if self.final_norm is not None:
            x = F.layer_norm(x, x.shape[-1:], self.final_norm)
        return F.linear(x, self.to_logits)

    def _project_memory(self, mems) -> None:
        """Keys and values of a memory this decoder did not produce, as x-transformers computes them."""
        b, m, _ = mems[0].shape
        kv_dim = self.heads * self.dim_head
        for i, (block, mem) in enumerate(zip(self.blocks, mems)):
            self.hidden[i, :, :m] = mem
            h = F.layer_norm(mem, mem.shape[-1:], block.attn_norm)
            k, v = (h @ block.qkv[:, kv_dim:]).view(b, m, 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
            self.raw_keys[i, :, :, :m] = k
            self.kv[i, :, 1, :, :m] = v

    def _carried(self, mems, b: int):
        """The memory's layer inputs, raw keys and values, when mems are exactly the layer inputs this decoder
        holds last (as next_memory builds them from segment_hiddens): then nothing needs projecting again."""
        if mems is None or self.hidden is None or self.hidden.shape[1] != b or len(mems) != len(self.blocks):
            return None
        m, end = mems[0].shape[-2], self.length
        if m > end or not all(torch.equal(mem, self.hidden[i, :, end - m:end]) for i, mem in enumerate(mems)):
            return None
        # copies, as the memory moves to the front of the same buffers
        return tuple(t[..., end - m:end, :].clone() for t in (self.hidden, self.raw_keys, self.kv[:, :, 1]))

    def _allocate(self, b: int, slots: int) -> None:
        """Buffers for b rows of slots positions, kept while they are big enough."""
        if self.hidden is not None and self.hidden.shape[1] == b and self.hidden.shape[2] >= slots:
            return
        depth, d, h, dh = len(self.blocks), self.embed.shape[1], self.heads, self.dim_head
        self.hidden = self.embed.new_empty(depth, b, slots, d)  # layer inputs: memory, then segment
        self.raw_keys = self.embed.new_empty(depth, b, h, slots, dh)  # before rotary, carried into the next memory
        self.kv = self.embed.new_empty(depth, b, 2, h, slots, dh)  # rotated keys, values
        self.queries = self.embed.new_empty(depth, b, h, 1, dh) if self.keeps_attention else None  # the last one
        # step() projects into one buffer through fixed views: no per-layer reshaping
        self.step_qkv = self.embed.new_empty(b, 3 * h * dh)
        qkv = self.step_qkv.view(b, 3, h, dh)
        r = 0 if self.rotary is None else 2 * self.rotary.inv_freq.numel()
        self.step_views = (qkv[:, 0, :, None], qkv[:, 1], qkv[:, 1:],  # q (b, h, 1, dh), k (b, h, dh), kv
                           torch.view_as_complex(qkv[:, :2, :, :r].unflatten(-1, (-1, 2))))  # q, k pairs rotated


def _attention_probs(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh)) for one query q (..., 1, dh) and keys (..., j, dh): (..., j), the weights
    scaled_dot_product_attention gives the values (no mask: the last query sees every key). The keys times the
    query, as the query times the keys transposed would copy the strided keys first."""
    return ((keys @ q.transpose(-1, -2))[..., 0] * q.shape[-1] ** -0.5).softmax(dim=-1)


def _rotate(t: torch.Tensor, rotation: torch.Tensor) -> None:
    """Rotary embedding in place on t (..., n, dh): x-transformers rotates adjacent pairs of the first r features,
    which is multiplying them, read as complex numbers, by rotation (n, r / 2)."""
    torch.view_as_complex(t[..., :2 * rotation.shape[-1]].unflatten(-1, (-1, 2))).mul_(rotation)


def _block(attn_layer, ff_layer) -> Block:
    (attn_norm, *_), attn, _ = attn_layer
    (ff_norm, *_), ff, _ = ff_layer
    ff_in, ff_out = ff.ff[0][0], ff.ff[-1]
    qkv = torch.cat([w.detach() for w in (attn.to_q.weight, attn.to_k.weight, attn.to_v.weight)])
    return Block(_gain(attn_norm), qkv.t(),
                 attn.to_out.weight.detach().t() if isinstance(attn.to_out, nn.Linear) else None,
                 _gain(ff_norm), ff_in.weight.detach().t(), _bias(ff_in), ff_out.weight.detach().t(), _bias(ff_out))


def _bias(linear: nn.Linear) -> torch.Tensor:
    return linear.weight.new_zeros(linear.out_features) if linear.bias is None else linear.bias.detach()


def _gain(norm: LayerNorm) -> torch.Tensor:
    return norm.gamma.detach() + float(norm.unit_offset)
