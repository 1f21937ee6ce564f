"""Per-token details against x-transformers' own attention and logits, on models of this check's own: random
configurations unlike the tests', and the shipped checkpoint. Prints the worst difference of every figure.
python -m benchmarks.details_check"""

import math
import time
from pathlib import Path

import torch

from xldemo.checkpoint import DEFAULT_CHECKPOINT, Checkpoint, build_model, load_checkpoint
from xldemo.engine import GenerationSettings, Started, Token, generate
from xldemo.errors import XLDemoError
from xldemo.teacher import teacher_forced_attention
from xldemo.tokenizer import ByteTokenizer

PROMPT = Path(__file__).resolve().parent.parent / "xldemo" / "prompts" / "macbeth_dagger.txt"
# unlike the tests' models: other widths, head counts, segment and memory lengths, a memory not a multiple of the
# segment, flash attention on x-transformers' own paths, learned key/values, and more layers to rotate memory through
CONFIGS = {
    "rotary, 3 heads of 16, L 12, mem 20, flash": dict(
        max_seq_len=12, max_mem_len=20, attn_layers=dict(dim=48, depth=3, heads=3, rotary_pos_emb=True,
                                                         attn_flash=True)),
    "absolute positions, 4 layers, L 10, mem 7": dict(
        max_seq_len=10, max_mem_len=7, attn_layers=dict(dim=40, depth=4, heads=5)),
    "alibi, flash, L 9, mem 25": dict(
        max_seq_len=9, max_mem_len=25, attn_layers=dict(dim=32, depth=2, heads=4, alibi_pos_bias=True,
                                                        attn_flash=True)),
    "t5 bias, shift_mem_down 2, 4 layers, L 6, mem 15": dict(
        max_seq_len=6, max_mem_len=15, shift_mem_down=2, attn_layers=dict(dim=32, depth=4, heads=2,
                                                                           rel_pos_bias=True)),
    "rotary, 3 learned key/values, L 7, mem 7": dict(
        max_seq_len=7, max_mem_len=7, attn_layers=dict(dim=24, depth=2, heads=3, rotary_pos_emb=True,
                                                       attn_num_mem_kv=3)),
    "token shift (uncached), L 8, mem 11": dict(
        max_seq_len=8, max_mem_len=11, attn_layers=dict(dim=32, depth=2, heads=2, rotary_pos_emb=True,
                                                        shift_tokens=1)),
}
FIGURES = ("logprob", "rank", "top-5 log-probs", "memory share", "attended weights", "attended off the keys")


def random_checkpoint(config: dict, seed: int) -> Checkpoint:
    config = {"num_tokens": 256, **config}
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():  # sharper than random init: ranks and attention that are not all ties
        model.to_logits.weight.mul_(6.0)
    return Checkpoint(model, config, ByteTokenizer(), "random")


def reference_model(checkpoint: Checkpoint):
    """The same weights with flash attention off: x-transformers then returns its attention probabilities."""
    config = {k: v for k, v in checkpoint.config.items() if k != "tokenizer"}
    config["attn_layers"] = {**config["attn_layers"], "attn_flash": False}
    net = build_model(config).eval()
    net.load_state_dict(checkpoint.model.state_dict())
    return net


def worst_differences(checkpoint: Checkpoint, prompt: list[int], settings: GenerationSettings, net
                      ) -> tuple[str, int, dict[str, float]]:
    """The decoder path, the tokens checked, and per figure the largest difference from the teacher-forced pass."""
    events = list(generate(checkpoint, prompt, settings))
    decoder = next(e.decoder for e in events if isinstance(e, Started))
    tokens = [e for e in events if isinstance(e, Token) and e.sample == 0]
    logits, attention, shares = teacher_forced_attention(net, torch.tensor([prompt + [t.id for t in tokens]]))
    worst = dict.fromkeys(FIGURES, 0.0)
    for token in tokens:
        query, details = token.position - 1, token.details
        log_probs = logits[0, query].log_softmax(-1)
        weights = attention[0, query].mean(dim=0)  # (n,): over layers; NaN where no key holds that position
        shown = [w for _, w in details.attended]
        found = {
            "logprob": abs(token.logprob - log_probs[token.id].item()),
            "rank": abs(details.rank - (log_probs > log_probs[token.id]).sum().item()),
            "top-5 log-probs": max(*(abs(lp - log_probs[i].item()) for i, lp in details.top),
                                   *(abs(a - b) for (_, a), b in zip(details.top, log_probs.topk(5).values.tolist()))),
            "memory share": (torch.tensor(details.memory_share) - shares[0, query]).abs().max().item(),
            "attended weights": max(max(abs(w - weights[p].item()) for p, w in details.attended),
                                    max(abs(a - b) for a, b in zip(shown, weights.nan_to_num(-1).topk(len(shown))
                                                                   .values.tolist()))),
            "attended off the keys": sum(math.isnan(weights[p].item()) for p, _ in details.attended),
        }
        worst = {k: max(worst[k], v) for k, v in found.items()}
    return decoder, len(tokens), worst


def report(name: str, decoder: str, count: int, worst: dict[str, float]) -> str:
    figures = ", ".join(f"{k} {v:.2g}" for k, v in worst.items())
    return f"{name} [{decoder}, {count} tokens]: {figures}"


def worst_of(runs: list[tuple[int, dict[str, float]]]) -> tuple[int, dict[str, float]]:
    return sum(count for count, _ in runs), {k: max(worst[k] for _, worst in runs) for k in FIGURES}


def main() -> None:
    began, prompt_text, lines, every = time.perf_counter(), PROMPT.read_bytes(), [], []
    for seed, (name, config) in enumerate(CONFIGS.items()):
        checkpoint = random_checkpoint(config, seed)
        net, seg_len = reference_model(checkpoint), config["max_seq_len"]
        for decoder in ("fast", "generic", "uncached"):
            runs = []
            try:
                for length in (1, seg_len - 1, 2 * seg_len + 1, 4 * seg_len + 3):  # 5 segments generated after each
                    settings = GenerationSettings(max_new_tokens=5 * seg_len, temperature=1.2, seed=length,
                                                  details=True, decoder=decoder)
                    path, count, worst = worst_differences(checkpoint, list(prompt_text[:length]), settings, net)
                    runs.append((count, worst))
            except XLDemoError as e:  # that decoder does not run this model, or not exactly
                lines.append(f"{name} [{decoder}]: not run ({e})")
                continue
            lines.append(report(name, path, *worst_of(runs)))
            every += runs
    shipped = load_checkpoint(DEFAULT_CHECKPOINT)
    net = reference_model(shipped)
    for decoder in ("fast", "generic"):  # 700 prompt bytes and 600 tokens: three segment boundaries crossed
        settings = GenerationSettings(max_new_tokens=600, temperature=0.8, seed=1, details=True, decoder=decoder)
        path, count, worst = worst_differences(shipped, list(prompt_text[:700]), settings, net)
        lines.append(report("the shipped checkpoint (flash attention)", path, count, worst))
        every.append((count, worst))
    print("\n".join(lines))
    print(report("worst of all", "every path", *worst_of(every)))
    print(f"{len(every)} runs in {time.perf_counter() - began:.0f} s, torch {torch.__version__}")


if __name__ == "__main__":
    main()
