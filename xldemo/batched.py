"""The batched decoder: the fast decoder's arithmetic over many independent streams at once, each row with its own
memory length, its own place in its own segment and its own segment boundaries."""

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from x_transformers import TransformerWrapper

from .errors import XLDemoError
from .fast import FastDecoder, _rotate
from .memory import Memory


WIDE = 4  # rows from which a step multiplies by the contiguous copies of the weights (see BatchedDecoder.__init__)
WIDE_MATRICES = ("qkv", "out", "ff_in", "ff_out")


@dataclass(frozen=True)
class RowState:
    """A row's memory slots and the segment slots it has filled, per layer, as BatchedDecoder.saved copies them."""
    memory: int
    offset: int
    limit: int  # the row's mem_len
    hidden: torch.Tensor  # (depth, memory + offset, d)
    raw_keys: torch.Tensor  # (depth, h, memory + offset, dh)
    keys: torch.Tensor  # (depth, h, dh, memory + offset)
    values: torch.Tensor  # (depth, h, memory + offset, dh)


class BatchedDecoder:
    """Rows 0 to rows - 1 are live streams. Each row's memory sits right-aligned in the first memory_slots slots of
    its buffers and its segment always starts at slot memory_slots, so that a slot's rotary position (the slot minus
    memory_slots) is the same for every row and one rotation table serves all; per-row masks hide the memory slots a
    row does not have and the segment slots it has not reached. Buffers are zeroed when allocated, so that masked
    slots hold finite numbers (a NaN times a zero weight would still be NaN). Rotated keys are kept transposed, slots
    last: attention's scores then read each head's keys as whole rows of memory, a third faster on this CPU, where
    reading the keys is what that product costs."""

    name = "batched"

    def __init__(self, net: TransformerWrapper, memory_slots: int | None = None, capacity: int = 1):
        """capacity: rows to allocate for now (more grow the buffers, copying the live rows over)."""
        self.fast = FastDecoder(net)  # the weight views, and the refusal of what the fast path does not implement
        # the matrices again, laid out (in, out) in memory: with WIDE rows or more the product reads them faster
        # (attention's reads evict them from the cache every step; 4 to 8 rows of the shipped model: a step 2-7% faster)
        # and gives the same bits as on the views. With fewer rows the product sums in another order (up to 4e-6
        # apart), so those steps keep the views: a stream's logits do not depend on the layout it happened to meet
        self.wide_blocks = [replace(block, **{name: getattr(block, name).contiguous() for name in WIDE_MATRICES
                                              if getattr(block, name) is not None}) for block in self.fast.blocks]
        self.seg_len, self.heads, self.dim_head = self.fast.seg_len, self.fast.heads, self.fast.dim_head
        self.rows, self.capacity, self.memory_slots = 0, 0, 0
        self.memory: list[int] = []  # per row: memory slots it holds
        self.offsets: list[int] = []  # per row: tokens of its current segment so far
        self.limits: list[int] = []  # per row: its mem_len
        with torch.inference_mode():  # the buffers are inference tensors, whichever call allocates them
            self._allocate(capacity, net.max_mem_len if memory_slots is None else memory_slots)

    @torch.inference_mode()
    def add(self, tokens: torch.Tensor, mems: Memory, mem_len: int) -> torch.Tensor:
        """Opens a new row, the last, with a segment's first tokens (1, n) after the memory mems (per layer (1, m, d)
        or None); returns its last logits (1, v)."""
        n = tokens.shape[-1]
        if not 1 <= n <= self.seg_len:
            raise XLDemoError(f"a segment starts with 1 to {self.seg_len} tokens, got {n}")
        m = 0 if mems is None else mems[0].shape[-2]
        row = self._open_row(m, mem_len)
        if m:
            self._project_memory(row, mems)
        return self._prefill(row, tokens)

    def saved(self, row: int) -> "RowState":
        """Row's memory and segment so far: another row opened from it (restore) goes on exactly as row would."""
        m, n, top = self.memory[row], self.offsets[row], self.memory_slots
        span = slice(top - m, top + n)
        return RowState(m, n, self.limits[row], self.hidden[:, row, span].clone(), self.raw_keys[:, row, :, span].clone(),
                        self.keys[:, row, ..., span].clone(), self.values[:, row, :, span].clone())

    @torch.inference_mode()
    def restore(self, state: "RowState") -> None:
        """Opens a new row, the last, where the row state was saved from stood: no arithmetic, only copies."""
        row, top = self._open_row(state.memory, state.limit), self.memory_slots
        span = slice(top - state.memory, top + state.offset)
        self.hidden[:, row, span] = state.hidden
        self.raw_keys[:, row, :, span] = state.raw_keys
        self.keys[:, row, ..., span] = state.keys
        self.values[:, row, :, span] = state.values
        self.offsets[row] = state.offset

    def _open_row(self, m: int, mem_len: int) -> int:
        """A new last row for a memory of m slots and at most mem_len, the buffers grown if need be."""
        capacity = 2 * self.capacity if self.rows == self.capacity else self.capacity
        if capacity != self.capacity or max(m, mem_len) > self.memory_slots:
            self._allocate(capacity, max(self.memory_slots, m, mem_len))
        self.rows += 1
        self.memory.append(m)
        self.offsets.append(0)
        self.limits.append(mem_len)
        return self.rows - 1

    @torch.inference_mode()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Appends one token per row (rows,), a row whose segment is full opening its next one with the memory the
        finished one leaves; returns their logits (rows, v)."""
        b, top = self.rows, self.memory_slots
        for row in range(b):
            if self.offsets[row] == self.seg_len:
                self._next_segment(row)
        fast = self.fast
        offsets = torch.tensor(self.offsets)  # (b,)
        slot = offsets + top  # (b,): where each row's token goes
        begin, end = top - max(self.memory), top + max(self.offsets) + 1  # the keys any row attends to
        bias = None if b == 1 else self._bias(begin, end, slot)  # one row attends to exactly [begin, end)
        rows = self.row_index[:b]
        x = F.embedding(ids, fast.embed)  # (b, d)
        if fast.pos_embed is not None:
            x = x + fast.pos_embed[offsets]
        rotation = None if fast.rotary is None else self.rotation[slot][:, None, None]  # (b, 1, 1, r / 2)
        inputs, raw = [], []  # per layer, written to the buffers after the loop: one indexed write each, not six
        for block, keys, values in zip(self.wide_blocks if b >= WIDE else fast.blocks, self.keys, self.values):
            inputs.append(x)
            qkv = (F.layer_norm(x, x.shape[-1:], block.attn_norm) @ block.qkv).view(b, 3, self.heads, self.dim_head)
            raw.append(qkv[:, 1].clone())
            if rotation is not None:
                _rotate(qkv[:, :2], rotation)  # q and k
            keys[rows, :, :, slot] = qkv[:, 1]  # (b, h, dh)
            values[rows, :, slot] = qkv[:, 2]
            out = self._attend(qkv[:, 0], keys[:b, ..., begin:end], values[:b, :, begin:end], bias)  # (b, h * dh)
            x = x + out if block.out is None else torch.addmm(x, out, block.out)
            h = F.layer_norm(x, x.shape[-1:], block.ff_norm)
            x = x + torch.addmm(block.ff_out_bias, F.gelu(torch.addmm(block.ff_in_bias, h, block.ff_in)), block.ff_out)
        self.hidden[:, rows, slot] = torch.stack(inputs)  # (depth, b, d)
        self.raw_keys[:, rows, :, slot] = torch.stack(raw, dim=1)  # (b, depth, h, dh): indexed dimensions first
        self.offsets = [o + 1 for o in self.offsets]
        return fast._logits(x)

    def _bias(self, begin: int, end: int, slot: torch.Tensor) -> torch.Tensor:
        """0 where a row's query sees the key in slots [begin, end), -inf where not: (rows * h, 1, n)."""
        b, top, keys = self.rows, self.memory_slots, self.slot_index[begin:end]  # (n,)
        hidden = (keys < top - torch.tensor(self.memory)[:, None]) | (keys > slot[:, None])  # (b, n)
        bias = torch.zeros(b, 1, keys.numel()).masked_fill_(hidden[:, None], float("-inf"))  # (b, 1, n)
        return bias.expand(b, self.heads, -1).reshape(b * self.heads, 1, -1)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None):
        """q (b, h, dh) on keys (b, h, dh, n), transposed, and values (b, h, n, dh) -> (b, h * dh); bias: see _bias,
        None where every row sees every slot. One product per row and head, batched over both: the CPU runs it faster
        than scaled_dot_product_attention with a mask, and for one row too, since that kernel copies the transposed
        keys to scale them (a step 8% faster, 3.51 ms against 3.83 on the shipped model)."""
        b, h, dh, n = keys.shape
        q, keys = q.reshape(b * h, 1, dh), keys.reshape(b * h, dh, n)
        scores = torch.bmm(q, keys).mul_(dh ** -0.5) if bias is None else torch.baddbmm(bias, q, keys, alpha=dh ** -0.5)
        return torch.bmm(scores.softmax(dim=-1), values.reshape(b * h, n, dh)).view(b, h * dh)

    @torch.inference_mode()
    def remove(self, row: int) -> None:
        """Frees row; the last row moves into its place (the caller moves its own record of rows alike)."""
        last = self.rows - 1
        if row != last:
            begin, end = self.memory_slots - self.memory[last], self.memory_slots + self.offsets[last]
            self.hidden[:, row, begin:end] = self.hidden[:, last, begin:end]
            self.keys[:, row, ..., begin:end] = self.keys[:, last, ..., begin:end]
            for buffer in (self.raw_keys, self.values):
                buffer[:, row, :, begin:end] = buffer[:, last, :, begin:end]
        for per_row in (self.memory, self.offsets, self.limits):
            per_row[row] = per_row[last]
            per_row.pop()
        self.rows = last

    def memory_tokens(self, row: int) -> int:
        """Hidden states per layer in the memory of row's current segment."""
        return self.memory[row]

    def _prefill(self, row: int, ids: torch.Tensor) -> torch.Tensor:
        """Runs ids (1, n) at the first n slots of row's segment, each attending to its memory and the segment up to
        itself, as FastDecoder._prefill does for a batch of one."""
        fast, n, m = self.fast, ids.shape[-1], self.memory[row]
        begin, end = self.memory_slots, self.memory_slots + n
        x = F.embedding(ids, fast.embed)  # (1, n, d)
        if fast.pos_embed is not None:
            x = x + fast.pos_embed[:n]
        rotation = None if fast.rotary is None else self.rotation[begin:end]  # (n, r / 2)
        mask = None if n == 1 else torch.ones(n, m + n, dtype=torch.bool).tril(m)  # (n, m + n)
        one = slice(row, row + 1)
        for block, hidden, raw_keys, keys, values in zip(fast.blocks, self.hidden, self.raw_keys, self.keys,
                                                         self.values):
            hidden[one, begin:end] = x
            h = F.layer_norm(x, x.shape[-1:], block.attn_norm)
            q, k, v = (h @ block.qkv).view(1, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
            raw_keys[one, :, begin:end] = k  # (1, h, n, dh)
            if rotation is not None:
                _rotate(q, rotation)
                _rotate(k, rotation)
            keys[one, ..., begin:end] = k.transpose(-1, -2)
            values[one, :, begin:end] = v
            out = F.scaled_dot_product_attention(q, keys[one, ..., begin - m:end].transpose(-1, -2),
                                                 values[one, :, begin - m:end], attn_mask=mask)  # (1, h, n, dh)
            out = out.transpose(1, 2).flatten(2)  # (1, n, h * dh)
            x = x + (out if block.out is None else out @ block.out)
            h = F.layer_norm(x, x.shape[-1:], block.ff_norm)
            x = x + (F.gelu(h @ block.ff_in + block.ff_in_bias) @ block.ff_out + block.ff_out_bias)
        self.offsets[row] = n
        return fast._logits(x[:, -1])

    def _project_memory(self, row: int, mems: Memory) -> None:
        """Keys and values of a memory row did not produce (a warm-up's), as x-transformers computes them."""
        m, kv_dim = mems[0].shape[-2], self.heads * self.dim_head
        memory = slice(self.memory_slots - m, self.memory_slots)
        for block, mem, hidden, raw_keys, values in zip(self.fast.blocks, mems, self.hidden, self.raw_keys,
                                                        self.values):
            hidden[row, memory] = mem[0]
            h = F.layer_norm(mem[0], mem.shape[-1:], block.attn_norm)
            k, v = (h @ block.qkv[:, kv_dim:]).view(m, 2, self.heads, self.dim_head).permute(1, 2, 0, 3)
            raw_keys[row, :, memory] = k  # (h, m, dh)
            values[row, :, memory] = v
        self._rotate_memory(row, memory)

    def _next_segment(self, row: int) -> None:
        """Row's full segment becomes part of its memory: the last mem_len of its memory and segment move to the
        memory slots, as next_memory builds them, their keys and values carried over and rotated to their new
        positions."""
        m = min(self.limits[row], self.memory[row] + self.seg_len)
        top = self.memory_slots
        source, target = slice(top + self.seg_len - m, top + self.seg_len), slice(top - m, top)
        self.hidden[:, row, target] = self.hidden[:, row, source].clone()
        self.raw_keys[:, row, :, target] = self.raw_keys[:, row, :, source].clone()
        self.values[:, row, :, target] = self.values[:, row, :, source].clone()
        self.memory[row], self.offsets[row] = m, 0
        self._rotate_memory(row, target)

    def _rotate_memory(self, row: int, memory: slice) -> None:
        keys = self.raw_keys[:, row, :, memory].clone()  # (depth, h, m, dh)
        if self.fast.rotary is not None:
            _rotate(keys, self.rotation[memory])
        self.keys[:, row, ..., memory] = keys.transpose(-1, -2)

    def _allocate(self, capacity: int, memory_slots: int) -> None:
        """Buffers for capacity rows of memory_slots memory slots and a segment; the live rows move over, shifted so
        that their memory stays right-aligned."""
        fast, old = self.fast, (self.hidden, self.raw_keys, self.keys, self.values) if self.capacity else None
        depth, d, h, dh = len(fast.blocks), fast.embed.shape[1], self.heads, self.dim_head
        slots, shift = memory_slots + self.seg_len, memory_slots - self.memory_slots
        self.hidden = fast.embed.new_zeros(depth, capacity, slots, d)  # layer inputs: memory, then segment
        self.raw_keys = fast.embed.new_zeros(depth, capacity, h, slots, dh)  # before rotary, carried into memory
        # rotated keys (transposed) and values apart, so that rows and heads merge into one batch dimension of
        # attention's
        self.keys = fast.embed.new_zeros(depth, capacity, h, dh, slots)
        self.values = fast.embed.new_zeros(depth, capacity, h, slots, dh)
        if old is not None and self.rows:
            rows = slice(0, self.rows)
            self.hidden[:, rows, shift:] = old[0][:, rows]
            self.keys[:, rows, ..., shift:] = old[2][:, rows]
            for buffer, previous in zip((self.raw_keys, self.values), (old[1], old[3])):
                buffer[:, rows, :, shift:] = previous[:, rows]
        self.capacity, self.memory_slots = capacity, memory_slots
        self.slot_index = torch.arange(slots)
        self.row_index = torch.arange(capacity)
        if fast.rotary is not None:
            positions = torch.arange(-memory_slots, self.seg_len)  # the slots' positions in their segment
            angles = fast.rotary(positions)[0][0, :, ::2]  # (slots, r / 2): x-transformers' own angles, to the bit
            self.rotation = torch.complex(angles.cos(), angles.sin())
