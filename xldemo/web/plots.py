"""The memory sweep on the page: bits per token against memory length, the trained length marked."""

from matplotlib.figure import Figure


def sweep_figure(result: dict) -> Figure:
    """A line of bits per token over the swept memory lengths (0 drawn at the left edge of a log-2 axis)."""
    points = result["points"]
    lengths = [p["mem_len"] for p in points]
    bits = [p["bits_per_token"] for p in points]
    fig = Figure(figsize=(7, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.set_xscale("symlog", base=2, linthresh=16)  # 0 fits beside powers of two
    ax.plot(lengths, bits, marker="o", color="tab:blue")
    trained = result["trained_mem_len"]
    ax.axvline(trained, color="tab:purple", linestyle="--", linewidth=1)
    ax.annotate(f"trained length ({trained})", (trained, max(bits)), xytext=(4, -2), textcoords="offset points",
                color="tab:purple", fontsize=8, va="top")
    useful = result["longest_useful_mem_len"]
    if useful < max(lengths):
        ax.axvspan(max(useful, 1), max(lengths), color="0.5", alpha=0.12, linewidth=0)
        ax.annotate("more memory than the text fills", (max(lengths), min(bits)), xytext=(-4, 4),
                    textcoords="offset points", ha="right", fontsize=8, color="0.35")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("memory length (hidden states per layer)")
    ax.set_ylabel("bits per token")
    ax.grid(alpha=0.3)
    return fig


def sweep_chips(result: dict) -> list[tuple[str, str]]:
    """(value, label) pairs: bits with no memory, with the trained length, and the best length swept."""
    bits = {p["mem_len"]: p["bits_per_token"] for p in result["points"]}
    best = min(bits, key=bits.get)
    chips = []
    if 0 in bits:
        chips.append((f"{bits[0]:.3f}", "bits/token without memory"))
    if result["trained_mem_len"] in bits:
        chips.append((f"{bits[result['trained_mem_len']]:.3f}", f"with the trained {result['trained_mem_len']}"))
    chips.append((f"{bits[best]:.3f}", f"best, with {best}"))
    return chips


def sweep_note(result: dict, prompt_tokens: int) -> str:
    scored = result["tokens"]
    return (f"scored the first {scored:,} of {prompt_tokens:,} tokens" if scored < prompt_tokens
            else f"scored all {scored:,} tokens") + f", in segments of {result['max_seq_len']}"
