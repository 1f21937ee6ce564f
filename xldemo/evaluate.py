"""Test-set evaluation: bits per byte on the held-out plays, with XL memory and without, by position in a segment."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from .data import DEFAULT_CACHE, prepare, test_texts
from .errors import XLDemoError
from .options import setting
from .teacher import bits_per_token

# result key -> the memory argument of the teacher-forced pass, and how tables and plots name it
MODES = {"memory": (True, "with memory"), "no_memory": (False, "without memory")}
TABLE_ROWS = 8  # the by-position table groups a segment's positions into this many equal ranges


@dataclass(frozen=True)
class EvalSettings:
    checkpoint: str = setting(str(DEFAULT_CHECKPOINT), "checkpoint folder or Hub repo id")
    # the size the quality bar is measured on
    bytes: int = setting(24 * 1024, "bytes scored from the start of each test edition")
    out: str = setting("artifacts/eval", "folder for eval.json, eval.md and eval.png")
    data: str = setting(str(DEFAULT_CACHE), "data cache folder (fetched once)")


@torch.no_grad()
def evaluate(net, editions: dict[str, torch.Tensor]) -> dict:
    """editions: name -> token ids (n,). Mean bits per predicted token (every one after the first) of each edition
    and of all together, with memory carried across segments and without, and the mean bits at each position
    of a segment: position p predicts the token after the segment's (p + 1)-th."""
    seq_len = net.max_seq_len
    if not editions:
        raise XLDemoError("no test editions to evaluate")
    for name, tokens in editions.items():
        if len(tokens) <= seq_len:  # within one segment there is no memory to carry
            raise XLDemoError(f"{name}: {len(tokens)} tokens; evaluation needs more than one segment ({seq_len})")
    positions = torch.cat([torch.arange(len(tokens) - 1) % seq_len for tokens in editions.values()])
    counts = torch.bincount(positions, minlength=seq_len)
    result = {"max_seq_len": seq_len, "position_counts": counts.tolist(),
              "editions": {name: {"bytes": len(tokens)} for name, tokens in editions.items()},
              "overall": {}, "by_position": {}}
    for mode, (memory, _) in MODES.items():
        bits = [bits_per_token(net, tokens[None], memory)[0].double() for tokens in editions.values()]
        for name, b in zip(editions, bits):
            result["editions"][name][mode] = b.mean().item()
        every = torch.cat(bits)
        result["overall"][mode] = every.mean().item()
        result["by_position"][mode] = (torch.bincount(positions, every, seq_len) / counts).tolist()
    return result


def position_ranges(result: dict, rows: int = TABLE_ROWS) -> list[tuple[int, int, dict[str, float]]]:
    """(first, last, {mode: mean bits}) for rows equal ranges of segment positions, weighted by how many tokens
    each position had."""
    seq_len = result["max_seq_len"]
    counts = torch.tensor(result["position_counts"], dtype=torch.float64)
    edges = [round(i * seq_len / rows) for i in range(rows + 1)]
    out = []
    for first, stop in zip(edges, edges[1:]):
        if stop > first:
            weights = counts[first:stop]
            means = {mode: (torch.tensor(result["by_position"][mode][first:stop], dtype=torch.float64)
                            * weights).sum().item()
                     / weights.sum().item() for mode in MODES}
            out.append((first, stop - 1, means))
    return out


def markdown_report(result: dict) -> str:
    """Two tables: bits per byte by edition (and all bytes together), then by position within a segment."""
    header = ["| with memory | without memory | gain from memory |", "|---:|---:|---:|"]
    lines = ["Bits per byte (mean over every byte after an edition's first), with memory carried across "
             f"segments of {result['max_seq_len']} bytes and with every segment on its own.", "",
             "| edition | bytes " + header[0], "|---|---:" + header[1]]
    editions = result["editions"]
    rows = [(name, e["bytes"], e) for name, e in editions.items()]
    rows.append(("**all**", sum(e["bytes"] for e in editions.values()), result["overall"]))
    lines += [f"| {name} | {n} | {_cells(bits)} |" for name, n, bits in rows]
    lines += ["", "| position in segment " + header[0], "|---" + header[1]]
    lines += [f"| {first}-{last} | {_cells(bits)} |" for first, last, bits in position_ranges(result)]
    return "\n".join(lines) + "\n"


def plot_report(result: dict, path: Path) -> Path:
    """Bits per byte by position within a segment, both ways, and the gain from memory, as a PNG."""
    from matplotlib.figure import Figure  # here, not at the top: the rest of the CLI starts without matplotlib

    seq_len, curves = result["max_seq_len"], result["by_position"]
    fig = Figure(figsize=(8, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    for mode, (_, label) in MODES.items():
        top.plot(range(seq_len), curves[mode], lw=0.8, label=f"{label}: {result['overall'][mode]:.3f} bpb overall")
    top.set_ylabel("bits per byte")
    top.set_title(f"Held-out test plays: {len(result['editions'])} editions, "
                  f"{sum(e['bytes'] for e in result['editions'].values())} bytes")
    top.legend()
    gain = [without - with_ for with_, without in zip(curves["memory"], curves["no_memory"])]
    bottom.plot(range(seq_len), gain, lw=0.8, color="tab:green")
    bottom.axhline(0, color="gray", lw=0.5)
    bottom.set_ylabel("gain from memory (bits)")
    bottom.set_xlabel(f"position within a segment of {seq_len} bytes")
    fig.savefig(path, dpi=110)
    return Path(path)


def run_eval(s: EvalSettings) -> str:
    """Evaluates s.checkpoint on the first s.bytes of every test edition, writes eval.json, eval.md and eval.png
    to s.out, and returns the markdown tables."""
    checkpoint = load_checkpoint(s.checkpoint)
    if s.bytes <= checkpoint.max_seq_len:
        raise XLDemoError(f"--bytes must be more than the checkpoint's max_seq_len ({checkpoint.max_seq_len}): "
                          "memory is carried from one segment to the next")
    out = Path(s.out)
    try:  # before the evaluation, so that a bad --out fails at once
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XLDemoError(f"--out {s.out}: cannot make that folder ({e.strerror or e})") from None
    texts = test_texts(prepare(Path(s.data)))
    editions = {name: torch.tensor(checkpoint.tokenizer.encode(text[:s.bytes]), dtype=torch.long)
                for name, text in texts.items()}
    result = {"checkpoint": shown_path(s.checkpoint), "bytes": s.bytes, **evaluate(checkpoint.model, editions)}
    report = markdown_report(result)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "eval.md").write_text(report)
    plot_report(result, out / "eval.png")
    return report


def shown_path(path: str) -> str:
    """A path under the working folder as a relative one, so that eval.json does not record this machine's layout."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _cells(bits: dict[str, float]) -> str:
    return f"{bits['memory']:.4f} | {bits['no_memory']:.4f} | {bits['no_memory'] - bits['memory']:+.4f}"
