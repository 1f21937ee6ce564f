"""Import check outside the suite: models trained here with XLAutoregressiveWrapper on the shipped prompts, saved
the ways their users save them, imported, and greedy CLI output compared with the original's teacher-forced argmax.
python -m benchmarks.import_check [--steps 300]"""

import argparse
import contextlib
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from x_transformers import Decoder, TransformerWrapper, XLAutoregressiveWrapper

from xldemo.checkpoint import load_checkpoint
from xldemo.cli import main as cli
from xldemo.teacher import teacher_forced_logits

PROMPTS = Path(__file__).resolve().parent.parent / "xldemo" / "prompts"
# trained on three plays' openings, prompted with the fourth's
TRAIN_TEXT = "".join((PROMPTS / name).read_text() for name in ("tempest_cast.txt", "tempest_prospero.txt",
                                                                 "macbeth_cast.txt"))
PROMPT = (PROMPTS / "macbeth_dagger.txt").read_text()[:150]
# shapes, positions and seeds unlike the suite's tiny models
MODELS = {
    "bytes": {"num_tokens": 256, "max_seq_len": 32, "max_mem_len": 48, "seed": 11,
              "attn_layers": {"dim": 64, "depth": 3, "heads": 4, "rotary_pos_emb": True}},
    "characters": {"max_seq_len": 24, "max_mem_len": 24, "seed": 12,
                   "attn_layers": {"dim": 48, "depth": 2, "heads": 4, "rel_pos_bias": True}},
    "BPE": {"max_seq_len": 16, "max_mem_len": 32, "seed": 13,
            "attn_layers": {"dim": 64, "depth": 2, "heads": 2, "alibi_pos_bias": True, "ff_glu": True}},
}


def save_torch(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def save_safetensors(state: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata={"format": "pt"})
    return path


def accelerate_shards(state: dict, folder: Path, shards: int = 2) -> Path:
    """The layout of accelerate's save_model(max_shard_size=...): shards and their index."""
    folder.mkdir()
    keys, weight_map = list(state), {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_safetensors({k: state[k] for k in keys[i::shards]}, folder / name)
        weight_map.update(dict.fromkeys(keys[i::shards], name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


# (name, how the source is written, storage dtype): every model is saved each of these ways
SAVES = [
    ("torch.save(model.state_dict())", lambda w, d: save_torch(w.net.state_dict(), d / "model.pt"), "float32"),
    ("wrapper's, under 'model', DDP", lambda w, d: save_torch(
        {"model": {"module." + k: v for k, v in w.state_dict().items()}, "step": 300}, d / "ck.pt"), "float32"),
    ("torch.compile'd wrapper's", lambda w, d: save_torch(torch.compile(w).state_dict(), d / "compiled.pt"),
     "float32"),
    (".safetensors", lambda w, d: save_safetensors(w.net.state_dict(), d / "model.safetensors"), "float32"),
    ("accelerate save_model, 2 shards", lambda w, d: accelerate_shards(w.state_dict(), d / "accelerate"), "float32"),
    ("torch.save, stored as bfloat16", lambda w, d: save_torch(w.net.state_dict(), d / "model.pt"), "bfloat16"),
]


def tokenizer_for(name: str, folder: Path) -> tuple[str, Callable[[str], list[int]], int]:
    """(--tokenizer, text -> ids, vocabulary size)."""
    if name == "bytes":
        return "bytes", lambda text: list(text.encode()), 256
    if name == "characters":
        vocab = sorted(set(TRAIN_TEXT + PROMPT))
        (folder / "vocab.json").write_text(json.dumps(vocab))
        return str(folder / "vocab.json"), lambda text: [vocab.index(c) for c in text], len(vocab)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([TRAIN_TEXT], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bpe.save(str(folder / "tokenizer.json"))
    return str(folder / "tokenizer.json"), lambda text: bpe.encode(text).ids, bpe.get_vocab_size()


def train(config: dict, data: list[int], steps: int, seed: int) -> tuple[XLAutoregressiveWrapper, float]:
    """AdamW on batches of 8 windows of four segments; returns the wrapper and its last loss."""
    torch.manual_seed(seed)
    kwargs = json.loads(json.dumps(config))
    wrapper = XLAutoregressiveWrapper(TransformerWrapper(attn_layers=Decoder(**kwargs.pop("attn_layers")), **kwargs))
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=2e-3)
    data, window = torch.tensor(data), 4 * config["max_seq_len"] + 1
    for _ in range(steps):
        starts = torch.randint(0, len(data) - window, (8,)).tolist()
        loss = wrapper(torch.stack([data[s:s + window] for s in starts]))  # (8, window) tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return wrapper.eval(), loss.item()


def run_cli(*args) -> str:
    """python -m xldemo ARGS in this process; its stdout, or an error if it exits otherwise than 0."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"python -m xldemo {' '.join(map(str, args[:2]))} exited {code}")
    return out.getvalue()


def agreement(ids: list[int], logits: torch.Tensor) -> str:
    """How many of ids are the argmax of logits (n, vocab), and where the first one that is not stands."""
    argmax = logits.argmax(-1).tolist()
    first = next((i for i, (a, b) in enumerate(zip(ids, argmax)) if a != b), None)
    return f"{sum(a == b for a, b in zip(ids, argmax))}/{len(ids)}" + ("" if first is None else f" (from {first})")


def check(name: str, spec: dict, steps: int, work: Path) -> list[list[str]]:
    folder = work / name
    folder.mkdir()
    tokenizer, encode, vocab = tokenizer_for(name, folder)
    config = {"num_tokens": vocab, **{k: v for k, v in spec.items() if k != "seed"}}
    began = time.perf_counter()
    wrapper, loss = train(config, encode(TRAIN_TEXT), steps, spec["seed"])
    trained = f"{name}: {sum(p.numel() for p in wrapper.parameters()):,} parameters, loss {loss:.2f} after {steps} " \
              f"steps ({time.perf_counter() - began:.0f} s)"
    (folder / "kwargs.json").write_text(json.dumps(config))
    prompt_ids, seg_len = encode(PROMPT), config["max_seq_len"]
    rows = []
    for index, (saved_as, save, dtype) in enumerate(SAVES):
        (folder / f"source-{index}").mkdir()
        source = save(wrapper, folder / f"source-{index}")
        out = folder / f"imported-{index}"
        run_cli("import", source, "--config", folder / "kwargs.json", "--out", out, "--tokenizer", tokenizer,
                "--dtype", dtype)
        result = json.loads(run_cli("generate", "--checkpoint", out, "--prompt", PROMPT, "--max-new-tokens",
                                    5 * seg_len, "--temperature", 0, "--json").rstrip("\n").split("\n")[-1])
        ids = result["token_ids"]
        tokens = torch.tensor([prompt_ids + ids])
        original = teacher_forced_logits(wrapper.net, tokens)[0]  # (n, vocab)
        imported = teacher_forced_logits(load_checkpoint(out).model, tokens)[0]  # (n, vocab)
        rows.append([name, saved_as, dtype, f"{len(prompt_ids)} + {len(ids)}",
                     str(len(result["segments"]) - 1 - (len(prompt_ids) - 1) // seg_len),
                     agreement(ids, original[len(prompt_ids) - 1:-1]), agreement(ids, imported[len(prompt_ids) - 1:-1]),
                     f"{(original - imported).abs().max().item():.2g}"])
    print(trained, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300, help="training steps of each model")
    args = parser.parse_args()
    torch.set_num_threads(2)
    header = ["model", "saved as", "stored", "tokens (prompt + greedy)", "boundaries crossed generating",
              "greedy = original's teacher-forced argmax", "= imported model's own", "max abs logit difference"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, spec in MODELS.items():
            rows += check(name, spec, args.steps, Path(work))
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ntorch {torch.__version__}, {args.steps} training steps per model, prompt: the first 150 characters of "
          f"macbeth_dagger.txt, greedy for 5 segments")


if __name__ == "__main__":
    main()
