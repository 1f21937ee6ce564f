"""Memory-length sweep: what one text costs the model, in bits per token, as its memory grows from none to beyond
the length it was trained with.

Every position scheme x-transformers offers runs with any memory length: rotary and ALiBi take the distance to a
memory slot as it is, T5's relative bias clamps long distances into its last bucket, and absolute positions index
only within a segment, the memory carrying hidden states with no position of their own. Beyond the trained length
the model meets distances (rotary, ALiBi) or more memory than it learned from; the sweep measures what that does."""

import math

import torch
import torch.nn.functional as F
from x_transformers import TransformerWrapper

from .errors import XLDemoError
from .options import number_list
from .teacher import teacher_forced_logits

DEFAULT_MEM_LENS = (0, 32, 64, 128, 256, 512, 1024)


@torch.inference_mode()
def segment_bits(net: TransformerWrapper, ids: torch.Tensor, mem_len: int) -> torch.Tensor:
    """ids (n,) -> bits (n - 1,) the segmented pass spends on each of ids[1:], every segment reading a memory of
    at most mem_len hidden states per layer, built as the engine builds it (whatever net's own max_mem_len)."""
    logits = teacher_forced_logits(net, ids[None, :-1], mem_len=mem_len)[0]  # (n - 1, v)
    return F.cross_entropy(logits.float(), ids[1:], reduction="none") / math.log(2)


def memory_sweep(net: TransformerWrapper, ids, mem_lens=DEFAULT_MEM_LENS) -> dict:
    """Mean bits per predicted token of ids (every one after the first) for each memory length, as data a table or
    a plot can take: the points in the order given, and the lengths that frame them."""
    tokens = torch.as_tensor(list(ids), dtype=torch.long)
    if tokens.numel() < 2:
        raise XLDemoError("the sweep needs a text of at least 2 tokens")
    mem_lens = check_mem_lens(mem_lens)
    points = [{"mem_len": m, "bits_per_token": segment_bits(net, tokens, m).double().mean().item()} for m in mem_lens]
    return {"tokens": tokens.numel(), "max_seq_len": net.max_seq_len, "trained_mem_len": net.max_mem_len,
            # memory never holds more than what precedes the last segment: longer settings change nothing
            "longest_useful_mem_len": (tokens.numel() - 2) // net.max_seq_len * net.max_seq_len,
            "points": points}


def check_mem_lens(mem_lens) -> tuple[int, ...]:
    """Memory lengths as given (a sequence, or comma-separated text), each a whole number >= 0."""
    if isinstance(mem_lens, str):
        try:
            mem_lens = number_list(mem_lens)
        except ValueError:
            raise XLDemoError(f"memory lengths must be comma-separated whole numbers, got {mem_lens!r}") from None
    mem_lens = tuple(mem_lens)
    if not mem_lens or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in mem_lens):
        raise XLDemoError(f"memory lengths must be one or more whole numbers >= 0, got {mem_lens!r}")
    return mem_lens


def sweep_table(result: dict, unit: str = "token") -> str:
    """A Markdown table: bits per unit for each memory length, the gain over no memory where 0 was swept, and the
    trained length marked."""
    bits = {p["mem_len"]: p["bits_per_token"] for p in result["points"]}
    lines = [f"Bits per {unit} of {result['tokens']} tokens, segments of {result['max_seq_len']}; the model was "
             f"trained with a memory of {result['trained_mem_len']}.", "",
             f"| memory | bits per {unit} | gain over no memory | |", "|---:|---:|---:|---|"]
    for mem_len, value in bits.items():
        gain = f"{bits[0] - value:+.4f}" if 0 in bits else "—"
        note = ("trained length" if mem_len == result["trained_mem_len"] else
                "beyond the trained length" if mem_len > result["trained_mem_len"] else "")
        if mem_len > result["longest_useful_mem_len"]:
            note = ", ".join(filter(None, (note, "more than the text fills")))
        lines.append(f"| {mem_len} | {value:.4f} | {gain} | {note} |")
    return "\n".join(lines) + "\n"
