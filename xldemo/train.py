"""Training with x-transformers' own XLAutoregressiveWrapper.forward (or its segment loop with speaker names' bytes
weighted, HeadingWeightedLoss): resumable, CPU or GPU, torchrun-ready."""

import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from x_transformers import XLAutoregressiveWrapper

from .checkpoint import Checkpoint, build_model, load_checkpoint, read_config, save_checkpoint
from .data import DEFAULT_CACHE, MODERN, SEPARATOR, VALIDATION_PLAY, load_split, prepare, train_plays, training_text
from .errors import XLDemoError
from .options import setting
from .rename import CastSampler, renamed_copies
from .speakers import SpeakerSettings, speaker_lines, speaker_measure, speaking_plays
from .teacher import bits_per_token
from .tokenizer import ByteTokenizer

MODEL_CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class TrainSettings:
    model_config: str = setting(str(MODEL_CONFIGS / "shakespeare-xl.json"), "config.json of the model to train",
                                metavar="PATH")
    out: str = setting("runs/shakespeare-xl", "run folder: resumable state, then the checkpoint in OUT/model")
    data: str = setting(str(DEFAULT_CACHE), "data cache folder (fetched once)")
    init_from: str = setting("", "checkpoint folder or Hub repo id whose weights training starts from (fine-tuning; "
                                 "they must fit --model-config's shapes); a resumed run's own state wins",
                             metavar="CHECKPOINT")
    folio: bool = setting(False, "also train on the folio editions of the training plays (the validation and test "
                                 "plays' stay out)")
    renamed_copies: int = setting(0, "also train on this many copies of the training plays (modern editions) with "
                                     "their characters renamed, made-up names drawn afresh for each copy, so that a "
                                     "speaker's name must be read from context rather than recalled", metavar="N")
    cast_samples: float = setting(0.0, "share of each batch made of crops of the training plays (modern editions) "
                                       "renamed afresh for each and opened by their cast, so that every speaker's name "
                                       "can be read earlier in the sample", metavar="SHARE")
    cast_real_names: float = setting(0.0, "share of the names in cast samples that are another training play's "
                                          "characters' (ROMEO in a crop of Hamlet) instead of made up: recalling what "
                                          "that name did in its own play misleads, only copying it pays",
                                     metavar="SHARE")
    cast_segments: int = setting(0, "segments per cast sample, several to a row (its cast then stays within a "
                                    "boundary or two of each name); 0: one cast sample a row", metavar="N")
    heading_weight: float = setting(1.0, "weight of the loss on the bytes of speaker names that open speeches (the "
                                         "choice of who speaks next), against 1 for every other byte; 1 trains on "
                                         "x-transformers' own loss", metavar="W")
    steps: int = setting(1200, "optimizer steps in all, counting those of a resumed run")
    batch_size: int = setting(8, "samples per step (per process under torchrun)")
    segments: int = setting(4, "segments per sample, so that memory is learned across boundaries")
    lr: float = setting(1.5e-3, "peak learning rate")
    min_lr_ratio: float = setting(0.1, "the cosine decay ends at lr times this")
    warmup_steps: int = setting(100, "steps of linear learning-rate warm-up")
    weight_decay: float = setting(0.1, "AdamW weight decay of the matrices")
    grad_clip: float = setting(1.0, "gradient norm clip")
    eval_every: int = setting(100, "steps between validation scores")
    eval_bytes: int = setting(0, "validation bytes scored each time, from the play's start; 0: the whole play")
    speaker_prompts: int = setting(SpeakerSettings.prompts, "validation prompts of the speaker-name measure at each "
                                                            "validation; 0 leaves the measure out")
    speaker_samples: int = setting(SpeakerSettings.samples, "samples per speaker-measure prompt")
    speaker_new_tokens: int = setting(SpeakerSettings.new_tokens, "tokens generated per speaker-measure sample")
    save_every: int = setting(50, "steps between saved states")
    seed: int = setting(0, "seed of the weights and of every batch")
    # bf16 pays on GPUs and on CPUs with AMX (1.74x fp32 here); without AMX it is far slower
    bf16: str = setting("auto", "bf16 autocast: auto (GPUs and AMX CPUs), on or off", choices=("auto", "on", "off"))
    storage_dtype: str = setting("float32", "dtype of the saved checkpoint",
                                 choices=("float32", "float16", "bfloat16"))


def training_corpus(s: TrainSettings, folder: Path) -> bytes:
    """What training crops its samples from: the training plays (folio editions too with s.folio), then
    s.renamed_copies copies of their modern editions with made-up names."""
    text = training_text(folder, s.folio)
    if not s.renamed_copies:
        return text
    return SEPARATOR.join([text, *renamed_copies(train_plays(Path(s.data)), s.renamed_copies, s.seed)])


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX), where bf16 autocast pays off."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def learning_rate(step: int, s: TrainSettings) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def sample_batch(data: torch.Tensor, length: int, batch_size: int, seed: int, step: int, rank: int) -> torch.Tensor:
    """(batch_size, length) random crops; a pure function of (seed, step, rank), so resuming replays nothing."""
    g = torch.Generator().manual_seed(hash((seed, step, rank)) & 0x7FFF_FFFF_FFFF)
    starts = torch.randint(0, len(data) - length, (batch_size,), generator=g)
    return torch.stack([data[i:i + length] for i in starts.tolist()]).long()


def with_cast_samples(batch: torch.Tensor, casts: CastSampler, s: TrainSettings, step: int, rank: int) -> torch.Tensor:
    """batch with its last round(s.cast_samples * rows) rows made by casts instead, each of one cast sample or, with
    s.cast_segments, of cast samples that long one after another; as sample_batch, a pure function of (seed, step,
    rank)."""
    count = round(s.cast_samples * len(batch))
    if not count:
        return batch
    rng = random.Random(f"cast samples {s.seed} {step} {rank}")  # a string seeds alike in every process
    length = batch.shape[1]
    piece = s.cast_segments * (length - 1) // s.segments if s.cast_segments else length
    pieces = -(-length // piece)  # cast samples enough to fill a row
    rows = [b"".join(casts.sample(piece, rng) for _ in range(pieces))[:length] for _ in range(count)]
    return torch.cat([batch[:len(batch) - count], torch.tensor([list(row) for row in rows])])


def heading_weights(batch: torch.Tensor, weight: float) -> torch.Tensor:
    """(rows, length) float weights of batch's bytes: `weight` on each speaker name that opens a speech (as the
    speaker-name measure reads them), 1 elsewhere."""
    weights = torch.ones(batch.shape)
    for row, ids in enumerate(batch.tolist()):
        for offset, name in speaker_lines(bytes(ids).decode("latin-1")):
            weights[row, offset:offset + len(name)] = weight
    return weights


class HeadingWeightedLoss(torch.nn.Module):
    """XLAutoregressiveWrapper.forward's loss as it trains here (memory detached at every boundary), each target
    byte's cross-entropy weighted by heading_weights and the sum divided by the weights': the wrapper weights each
    segment by its length, so at weight 1 the two are the same mean (tested)."""

    def __init__(self, net, weight: float):
        super().__init__()
        self.net, self.weight = net, weight

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        weights = heading_weights(batch, self.weight)[:, 1:].to(batch.device)  # per target byte
        inputs, targets, seg_len = batch[:, :-1], batch[:, 1:], self.net.max_seq_len
        mems, total = None, 0.0
        for x, y, w in zip(inputs.split(seg_len, -1), targets.split(seg_len, -1), weights.split(seg_len, -1)):
            logits, intermediates = self.net(x, mems=mems, return_mems=True, return_intermediates=True,
                                             detach_mems=True)
            mems = intermediates.mems
            total = total + (F.cross_entropy(logits.transpose(1, 2).float(), y, reduction="none") * w).sum()
        return total / weights.sum()


@torch.no_grad()
def validation_bpb(net, data: torch.Tensor, nbytes: int) -> float:
    net.eval()
    bpb = bits_per_token(net, data[None, :nbytes or None].long()).mean().item()
    net.train()
    return bpb


def validation_speakers(model, config: dict, play: bytes, trained: Counter, s: SpeakerSettings) -> dict:
    """The speaker-name measure on the validation play, run by the engine on a CPU copy of the weights."""
    net = build_model(config).eval()
    net.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    checkpoint = Checkpoint(net, config, ByteTokenizer(), "training")
    return speaker_measure(checkpoint, {VALIDATION_PLAY + MODERN: play}, trained, s)["overall"]


def validate(model, config: dict, val_data: torch.Tensor, trained: Counter | None, s: TrainSettings) -> dict:
    """What a model is chosen by: bits per byte on the validation play, and its speaker-name measure."""
    figures = {"val_bpb": validation_bpb(model, val_data, s.eval_bytes)}
    if s.speaker_prompts:
        speaker_settings = SpeakerSettings(prompts=s.speaker_prompts, samples=s.speaker_samples,
                                           new_tokens=s.speaker_new_tokens)
        figures["val_speakers"] = validation_speakers(model, config, bytes(val_data.cpu().numpy()), trained,
                                                      speaker_settings)
    return figures


def train(s: TrainSettings, progress: bool = True) -> dict:
    """Trains to s.steps (resuming from s.out if a state is there) and writes the checkpoint to s.out/model."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not 0 <= s.cast_samples <= 1:
        raise XLDemoError(f"cast samples must be a share from 0 to 1, got {s.cast_samples!r}")
    if not 0 <= s.cast_real_names <= 1:
        raise XLDemoError(f"cast real names must be a share from 0 to 1, got {s.cast_real_names!r}")
    if not 0 <= s.cast_segments <= s.segments:
        raise XLDemoError(f"cast segments must be from 0 to --segments ({s.segments}), got {s.cast_segments!r}")
    if not (isinstance(s.heading_weight, (int, float)) and math.isfinite(s.heading_weight) and s.heading_weight > 0):
        raise XLDemoError(f"heading weight must be a number above 0, got {s.heading_weight!r}")
    if s.bf16 not in ("auto", "on", "off"):
        raise XLDemoError(f"bf16 must be auto, on or off, got {s.bf16!r}")
    use_bf16 = s.bf16 == "on" or (s.bf16 == "auto" and (device.type == "cuda" or cpu_has_amx()))
    torch.manual_seed(s.seed)

    config = read_config(s.model_config)
    model = build_model(config)
    if s.init_from:
        start_from(model, s.init_from)
    model = model.to(device)
    wrapper = XLAutoregressiveWrapper(model) if s.heading_weight == 1 else HeadingWeightedLoss(model, s.heading_weight)
    trainer = torch.nn.parallel.DistributedDataParallel(wrapper) if world > 1 else wrapper
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=s.lr, betas=(0.9, 0.95))

    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    step, log = load_state(out, model, optimizer, device)
    folder = prepare(Path(s.data))
    train_data = torch.frombuffer(bytearray(training_corpus(s, folder)), dtype=torch.uint8)
    val_data = torch.frombuffer(bytearray(load_split(folder, "validation")), dtype=torch.uint8)
    plays = train_plays(Path(s.data)) if s.speaker_prompts or s.cast_samples else None  # read from the archive once
    trained = speaking_plays(plays) if s.speaker_prompts else None
    casts = CastSampler(plays, s.cast_real_names) if s.cast_samples else None
    length = s.segments * config["max_seq_len"] + 1
    tokens_per_step = s.batch_size * (length - 1) * world

    if rank == 0 and step == 0 and s.init_from:  # the starting weights' figures, for the run to be compared with
        log.append({"step": 0, **validate(model, config, val_data.to(device), trained, s)})
    model.train()
    bar = tqdm(total=s.steps, initial=step, disable=not progress or rank != 0, unit="step", dynamic_ncols=True)
    started, first_step, validating = time.perf_counter(), step, 0.0  # tokens/s leaves validation's time out
    elapsed = 0.0
    while step < s.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, s)
        batch = sample_batch(train_data, length, s.batch_size, s.seed, step, rank)
        if casts is not None:
            batch = with_cast_samples(batch, casts, s, step, rank)
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = trainer(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        entry = {"step": step, "loss": loss.item(), "lr": learning_rate(step - 1, s)}
        if rank == 0 and (step % s.eval_every == 0 or step == s.steps):
            began = time.perf_counter()
            entry.update(validate(model, config, val_data.to(device), trained, s))
            validating += time.perf_counter() - began
        elapsed = time.perf_counter() - started - validating
        log.append(entry)
        bar.update(1)
        bar.set_postfix(loss=f"{entry['loss']:.3f}", val_bpb=f"{last_val(log):.3f}",
                        tok_s=f"{tokens_per_step * (step - first_step) / elapsed:.0f}")
        if rank == 0 and (step % s.save_every == 0 or step == s.steps):
            save_state(out, model, optimizer, step, log, s)
    bar.close()
    if rank == 0:
        save_checkpoint(model, config, out / "model", dtype=s.storage_dtype)
    if world > 1:
        # every rank leaves together: a rank that tears down while rank 0 still saves can wait on it forever
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"steps": step, "tokens": step * tokens_per_step, "final_loss": log[-1].get("loss") if log else None,
            "val_bpb": last_val(log), "val_speakers": last_val(log, "val_speakers", None),
            # this process's steps only, validation left out: what a longer run of the same settings would get
            "tokens_per_s": tokens_per_step * (step - first_step) / elapsed if elapsed else None}


def last_val(log: list[dict], key: str = "val_bpb", missing=float("nan")):
    return next((e[key] for e in reversed(log) if key in e), missing)


def start_from(model, source: str) -> None:
    """Copies the weights of the checkpoint at source into model, which must have the same shapes."""
    weights = load_checkpoint(source).model.state_dict()
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        # the first line only names the module; the first difference follows
        differences = [line.strip() for line in str(e).splitlines()[1:] if line.strip()] or [str(e)]
        raise XLDemoError(f"--init-from {source}: its weights do not fit --model-config ({differences[0]})") from None


def save_state(out: Path, model, optimizer, step: int, log: list[dict], s: TrainSettings) -> None:
    """Model and optimizer tensors in safetensors, the rest in JSON: resumable without pickle."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).cpu().contiguous()
    save_file(tensors, out / "state.safetensors.tmp")
    (out / "state.json.tmp").write_text(json.dumps({"step": step, "settings": asdict(s), "log": log}))
    os.replace(out / "state.safetensors.tmp", out / "state.safetensors")
    os.replace(out / "state.json.tmp", out / "state.json")


def load_state(out: Path, model, optimizer, device) -> tuple[int, list[dict]]:
    if not (out / "state.json").is_file():
        return 0, []
    meta = json.loads((out / "state.json").read_text())
    tensors = load_file(out / "state.safetensors", device=str(device))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    opt = optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value if name != "step" else value.cpu()
    optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
    return meta["step"], meta["log"]
