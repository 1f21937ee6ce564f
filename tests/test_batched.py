"""The batched decoder against the segmented teacher-forced pass: streams with their own prompts, memory lengths
and segment boundaries, joining and leaving one shared batch at different steps."""

import pytest
import torch

from conftest import tiny_checkpoint, tiny_config
from test_fast import SUPPORTED, random_tokens
from xldemo.batched import BatchedDecoder
from xldemo.errors import XLDemoError
from xldemo.memory import memory_after
from xldemo.teacher import teacher_forced_logits


def reference_logits(net, tokens: torch.Tensor, mem_len: int) -> torch.Tensor:
    """The segmented teacher-forced pass (b, n, v), through x-transformers' own modules, with memory cut to mem_len:
    the model's own max_mem_len goes through teacher_forced_logits itself."""
    return teacher_forced_logits(net, tokens, mem_len=None if mem_len == net.max_mem_len else mem_len)


def run_streams(decoder: BatchedDecoder, net, streams: list[dict]) -> dict[int, torch.Tensor]:
    """Feeds each stream's tokens through one shared batch: stream i joins at step streams[i]["join"] with its
    prompt (warm-up through net, then its last partial segment) and leaves after its last token. Returns per stream
    the logits that predict its tokens after the prompt and the one after: (t - prompt + 1, v)."""
    seg_len, order, logits, fed = net.max_seq_len, [], {}, {}
    step = 0
    while len(logits) < len(streams) or order:
        for i, s in enumerate(streams):
            if s["join"] == step:
                tokens, prompt = s["tokens"], s["prompt"]
                current = (prompt - 1) // seg_len
                mems = memory_after(net, tokens[None, :current * seg_len], s["mem_len"])
                logits[i] = [decoder.add(tokens[None, current * seg_len:prompt], mems, s["mem_len"])[0]]
                order.append(i)
                fed[i] = prompt
        if order:
            out = decoder.step(torch.stack([streams[i]["tokens"][fed[i]] for i in order]))
            for row, i in enumerate(order):
                logits[i].append(out[row])
                fed[i] += 1
            for row in reversed(range(len(order))):
                if fed[order[row]] == len(streams[order[row]]["tokens"]):
                    decoder.remove(row)
                    order[row] = order[-1]
                    order.pop()
        step += 1
    return {i: torch.stack(rows) for i, rows in logits.items()}


def streams_for(net, seed: int) -> list[dict]:
    """Streams whose prompts end at every place in a segment, memory lengths below, at and above the model's, and
    which join and leave at different steps, so that their segment boundaries fall at different steps."""
    L, M = net.max_seq_len, net.max_mem_len
    shapes = [(1, M, 0), (L - 1, M, 0), (L, 0, 1), (L + 1, max(M - 2, 1), 2), (2 * L, M + 3, 3),
              (3 * L + 3, M, 5), (2 * L + L // 2, 1, 7)]
    return [{"tokens": random_tokens(1, prompt + 2 * L + 3 + k, seed=seed + k)[0], "prompt": prompt,
             "mem_len": mem_len, "join": join} for k, (prompt, mem_len, join) in enumerate(shapes)]


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_stream_gets_its_teacher_forced_logits(name):
    net = tiny_checkpoint(SUPPORTED[name]).model
    streams = streams_for(net, seed=len(name))
    got = run_streams(BatchedDecoder(net), net, streams)
    for i, s in enumerate(streams):
        reference = reference_logits(net, s["tokens"][None], s["mem_len"])[0, s["prompt"] - 1:]
        torch.testing.assert_close(got[i], reference, atol=1e-4, rtol=0, msg=lambda m: f"stream {i}: {m}")
        assert torch.equal(got[i].argmax(-1), reference.argmax(-1)), f"stream {i}"


def test_a_stream_alone_in_the_batch_and_among_others_gets_the_same_logits():
    net = tiny_checkpoint().model
    streams = streams_for(net, seed=3)
    together = run_streams(BatchedDecoder(net), net, streams)
    for i, s in enumerate(streams):
        alone = run_streams(BatchedDecoder(net), net, [{**s, "join": 0}])[0]
        torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=0)


def test_the_comparison_can_fail():
    """Guard: a stream whose memory is lost at its boundary is caught."""
    net = tiny_checkpoint().model
    decoder = BatchedDecoder(net)
    decoder._next_segment = lambda row: (decoder.memory.__setitem__(row, 0), decoder.offsets.__setitem__(row, 0))
    s = streams_for(net, seed=4)[5]
    got = run_streams(decoder, net, [s])[0]
    reference = teacher_forced_logits(net, s["tokens"][None])[0, s["prompt"] - 1:]
    assert (got - reference).abs().max() > 1e-2


def test_removing_rows_frees_them_and_the_rest_keep_their_place():
    net = tiny_checkpoint().model
    decoder, tokens = BatchedDecoder(net), random_tokens(3, 12, seed=8)
    for row in range(3):
        decoder.add(tokens[row:row + 1, :2 + row], None, net.max_mem_len)
    assert decoder.rows == 3 and decoder.capacity == 4
    decoder.remove(0)  # row 2 moves into row 0
    assert decoder.rows == 2 and decoder.offsets == [4, 3]
    out = decoder.step(torch.stack([tokens[2, 4], tokens[1, 3]]))
    reference = teacher_forced_logits(net, tokens)
    torch.testing.assert_close(out, torch.stack([reference[2, 4], reference[1, 3]]), atol=1e-4, rtol=0)


def test_unsupported_models_and_overlong_segments_are_refused():
    with pytest.raises(XLDemoError, match="does not support"):
        BatchedDecoder(tiny_checkpoint(tiny_config(rel_pos_bias=True)).model)
    net = tiny_checkpoint().model
    with pytest.raises(XLDemoError, match="1 to 8 tokens"):
        BatchedDecoder(net).add(random_tokens(1, 9, seed=0), None, 8)


def test_a_row_restored_from_its_saved_state_goes_on_exactly_as_the_row_itself():
    net = tiny_checkpoint(tiny_config(seq_len=8, mem_len=13)).model
    prompt = random_tokens(1, 3 * 8 + 5, seed=4)
    mems = memory_after(net, prompt[:, :24], 13)
    original, other = BatchedDecoder(net), BatchedDecoder(net, memory_slots=20)
    other.add(prompt[:, 24:26], memory_after(net, prompt[:, :8], 5), 5)  # another row first, and more memory slots
    original.add(prompt[:, 24:], mems, 13)
    other.restore(original.saved(0))
    assert other.rows == 2 and other.memory_tokens(1) == original.memory_tokens(0)
    ids = random_tokens(1, 12, seed=5)[0]  # past the segment's end: the restored row's memory rolls over too
    for token in ids:
        mine, theirs = original.step(token[None]), other.step(torch.stack([ids[0], token]))
        torch.testing.assert_close(theirs[1], mine[0], atol=1e-5, rtol=0)  # a batch of two sums in another order
