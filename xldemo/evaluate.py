"""Test-set evaluation: bits per byte on the held-out plays (memory or not, by position, by memory length), speakers."""

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from .data import DEFAULT_CACHE, MODERN, prepare, test_texts, train_plays
from .errors import XLDemoError
from .options import setting
from .speakers import SpeakerSettings, speaker_measure, speaker_table, speaking_plays
from .sweep import DEFAULT_MEM_LENS, check_mem_lens, memory_sweep
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
    mem_lens: str = setting(",".join(map(str, DEFAULT_MEM_LENS)), "comma-separated memory lengths the sweep runs over "
                            "each test edition (or over the --prompt-file text)")
    speaker_prompts: int = setting(SpeakerSettings.prompts, "prompts cut from each test play's modern edition for the "
                                   "speaker-name measure; 0 leaves the measure out")
    speaker_bytes: int = setting(SpeakerSettings.prompt_bytes, "bytes of each speaker-measure prompt")
    speaker_new_tokens: int = setting(SpeakerSettings.new_tokens, "tokens generated per speaker-measure sample")
    speaker_samples: int = setting(SpeakerSettings.samples, "samples per speaker-measure prompt, with memory and "
                                                            "without")
    speaker_seed: int = setting(SpeakerSettings.seed, "seed of the first speaker-measure prompt (the next ones count "
                                                      "up)")
    quick: bool = setting(False, "a check that everything runs, not figures: 1 speaker prompt per play, 2 samples of "
                                 "64 tokens, memory lengths 0 and the trained one")


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


def sweep_editions(net, editions: dict[str, torch.Tensor], mem_lens) -> dict:
    """memory_sweep over each edition, and over all of them together (weighted by tokens predicted)."""
    sweeps = {name: memory_sweep(net, tokens, mem_lens) for name, tokens in editions.items()}
    first = next(iter(sweeps.values()))
    weights = {name: sweep["tokens"] - 1 for name, sweep in sweeps.items()}
    bits = {name: [p["bits_per_token"] for p in sweep["points"]] for name, sweep in sweeps.items()}
    overall = [sum(bits[name][i] * weights[name] for name in sweeps) / sum(weights.values())
               for i in range(len(first["points"]))]
    return {"mem_lens": [p["mem_len"] for p in first["points"]], "trained_mem_len": first["trained_mem_len"],
            "max_seq_len": first["max_seq_len"], "editions": bits, "overall": overall}


def sweep_report(sweep: dict) -> str:
    """Bits per byte of each edition and of all together for each memory length, the trained one marked."""
    names = list(sweep["editions"])
    lines = [f"Bits per byte by memory length (the model was trained with {sweep['trained_mem_len']}; segments of "
             f"{sweep['max_seq_len']}).", "",
             "| memory | " + " | ".join(names) + " | all | gain over no memory (all) |",
             "|---:|" + "---:|" * (len(names) + 2)]
    start = sweep["overall"][sweep["mem_lens"].index(0)] if 0 in sweep["mem_lens"] else None
    for i, mem_len in enumerate(sweep["mem_lens"]):
        marked = f"{mem_len} (trained)" if mem_len == sweep["trained_mem_len"] else str(mem_len)
        gain = "—" if start is None else f"{start - sweep['overall'][i]:+.4f}"
        lines.append(f"| {marked} | " + " | ".join(f"{sweep['editions'][n][i]:.4f}" for n in names)
                     + f" | {sweep['overall'][i]:.4f} | {gain} |")
    return "\n".join(lines) + "\n"


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
    """Evaluates s.checkpoint on the first s.bytes of every test edition (bits per byte, then the memory sweep) and
    with the speaker-name measure on the test plays' modern editions, writes eval.json, eval.md and eval.png to
    s.out, and returns the markdown tables."""
    checkpoint = load_checkpoint(s.checkpoint)
    if s.quick:
        s = replace(s, speaker_prompts=min(1, s.speaker_prompts), speaker_samples=2, speaker_new_tokens=64,
                    mem_lens=f"0,{checkpoint.max_mem_len}")
    mem_lens = check_mem_lens(s.mem_lens)
    if s.speaker_prompts < 0:
        raise XLDemoError(f"--speaker-prompts must be 0 (no speaker measure) or more, got {s.speaker_prompts}")
    # built before any work is done, so that a bad speaker option fails at once
    speaker_settings = SpeakerSettings(prompts=max(1, s.speaker_prompts), prompt_bytes=s.speaker_bytes,
                                       new_tokens=s.speaker_new_tokens, samples=s.speaker_samples, seed=s.speaker_seed)
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
    result["memory_sweep"] = sweep_editions(checkpoint.model, editions, mem_lens)
    report = markdown_report(result) + "\n" + sweep_report(result["memory_sweep"])
    if s.speaker_prompts:
        plays = {name: text for name, text in texts.items() if name.endswith(MODERN)}
        trained = speaking_plays(train_plays(Path(s.data)))
        result["speakers"] = speaker_measure(checkpoint, plays, trained, speaker_settings)
        report += "\n" + speaker_table(result["speakers"])
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
