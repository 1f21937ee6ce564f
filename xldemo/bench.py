"""The benchmark: xldemo's engine and x-transformers' XLAutoregressiveWrapper.generate side by side, same model."""

import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import DEFAULT_CHECKPOINT, build_model, load_checkpoint, read_config, save_checkpoint
from .decoders import DECODERS
from .engine import GenerationSettings, Started, Token, generate
from .errors import XLDemoError
from .options import number_list, setting
from .serving import Scheduler
from .worker import DecodePool

RANDOM_CONFIG = Path(__file__).resolve().parent / "configs" / "shakespeare-xl.json"


@dataclass(frozen=True)
class BenchSettings:
    checkpoint: str = setting("", "checkpoint folder (default: the shipped one, else a random model of "
                                  "--random-config's shape)")
    random_config: str = setting("", "a config.json: benchmark a randomly initialised model of this shape instead")
    new_tokens: int = setting(256, "tokens decoded per timing, greedy")
    prompt_segments: int = setting(4, "length of the decode-speed prompt, in segments")
    ttft_prompt_bytes: int = setting(65536, "prompt bytes of the time-to-first-token row")
    memory_prompt_bytes: str = setting("1024,1048576", "prompt sizes of the peak-memory rows, one fresh process "
                                                       "per size and side; empty skips them")
    repeats: int = setting(3, "interleaved timings of both sides; the median is reported")
    cli_repeats: int = setting(2, "long and 1-token runs of `python -m xldemo generate --json` in fresh "
                                  "processes; 0 skips")
    # more than new_tokens: the difference must outweigh process start-up noise
    cli_new_tokens: int = setting(1024, "tokens of the CLI and app runs")
    app_repeats: int = setting(1, "runs of `python app.py`'s generate endpoint, whose stats line is read; 0 skips")
    streams: str = setting("1,2,4,8", "streams sampled at once through the serving scheduler, one row set each; "
                                      "empty skips them")
    stream_processes: str = setting("0", "for the streams rows: 0 decodes them in one scheduler in this process, N "
                                         "in N decoding processes as the app's server does; several, comma-separated, "
                                         "take turns in each round")
    decoder: str = setting("auto", "xldemo's decoding path", choices=("auto", *DECODERS))
    threads: int = setting(0, "torch threads; 0 is torch's choice")
    seed: int = setting(0, "seed of the random prompts and model")

    def __post_init__(self):
        for name, least in (("new_tokens", 2), ("prompt_segments", 1), ("ttft_prompt_bytes", 1), ("repeats", 1),
                            ("cli_repeats", 0), ("cli_new_tokens", 2), ("app_repeats", 0), ("threads", 0)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < least:
                raise XLDemoError(f"{name} must be an integer >= {least}, got {getattr(self, name)!r}")
        if self.checkpoint and self.random_config:
            raise XLDemoError("give checkpoint or random_config, not both")
        _sizes(self.memory_prompt_bytes)
        _sizes(self.streams, "streams")
        _sizes(self.stream_processes, "stream_processes", least=0, required=True)


@dataclass(frozen=True)
class Row:
    metric: str
    reference: float | None  # XLAutoregressiveWrapper.generate; None where it has no counterpart
    xldemo: float
    ratio: float | None  # how many times better xldemo is: higher speed, lower time or memory


def run_bench(settings: BenchSettings | None = None, log=lambda line: None) -> tuple[list[Row], dict]:
    """Rows of the table, and what they were measured on (model, decoder path, threads, date); log(line) hears
    of each stage."""
    settings = settings or BenchSettings()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory() as scratch:
        folder, source = _checkpoint_folder(settings, Path(scratch))
        checkpoint = load_checkpoint(folder)
        net, seg_len = checkpoint.model, checkpoint.max_seq_len
        reference = _reference(net)
        length = settings.prompt_segments * seg_len
        prompt = _prompt(length, settings.seed)
        rows, decoder = [], _decoder_path(checkpoint, settings)

        log(f"decode speed: {settings.new_tokens} tokens after a {length}-token prompt, {settings.repeats} rounds")
        per_token = {"reference": [], "xldemo": [], "details": []}
        for _ in range(settings.repeats):
            for side, run in (("reference", lambda n: _reference_seconds(reference, prompt, n)),
                              ("xldemo", lambda n: _xldemo_seconds(checkpoint, prompt, n, settings.decoder)),
                              # in the same rounds, so that what details cost is not a change in the machine's load
                              ("details", lambda n: _xldemo_seconds(checkpoint, prompt, n, settings.decoder, True))):
                long, short = run(settings.new_tokens), run(1)
                per_token[side].append((long - short) / (settings.new_tokens - 1))
        ref_speed, our_speed, details_speed = (1 / statistics.median(per_token[s]) for s in per_token)
        rows.append(Row(f"decode tokens/s (greedy, {length}-token prompt)", ref_speed, our_speed, our_speed / ref_speed))
        rows.append(Row(f"decode tokens/s with per-token details, same rounds ({details_speed / our_speed:.2f}x the "
                        "speed without)", None, details_speed, details_speed / ref_speed))

        if settings.cli_repeats:
            log("decode speed through the CLI, fresh processes")
            cli_speed, reported = _cli_speed(folder, prompt, settings)
            # x-transformers has no command line: compared with its in-process speed
            rows.append(Row("decode tokens/s, `python -m xldemo generate --json` in fresh processes", None,
                            cli_speed, cli_speed / ref_speed))
            rows.append(Row("decode tokens/s, as that JSON reports it", None, reported, reported / ref_speed))

        if settings.app_repeats:
            log("decode speed in the app: `python app.py`, its stats line")
            app_speed = _app_speed(folder, prompt, settings)
            rows.append(Row("decode tokens/s, as the app's stats line reports it", None, app_speed,
                            app_speed / ref_speed))

        ways = _sizes(settings.stream_processes, "stream_processes", least=0, required=True)
        for n in _sizes(settings.streams, "streams"):
            log(f"serving: {n} streams at once, {settings.repeats} rounds, each way in turn")
            runs = {p: [] for p in ways}
            for _ in range(settings.repeats):
                for processes in ways:  # in turns, so that a change in the machine's load reaches every way alike
                    runs[processes].append(_serving_run(checkpoint, prompt, n, settings.new_tokens, processes))
            for processes in ways:
                total, each = (statistics.median(f(rates) for rates, _ in runs[processes])
                               for f in (sum, statistics.median))
                way = (f"{processes} decoding process{'es' if processes > 1 else ''}" if processes
                       else "the scheduler")
                rows.append(Row(f"decode tokens/s, {n} at once through {way}, all together (ratio: to one stream "
                                "alone)", None, total, total / our_speed))
                rows.append(Row(f"decode tokens/s per stream, {n} at once through {way} (ratio: to one stream alone)",
                                None, each, each / our_speed))
                rows.append(Row(f"peak RSS growth per stream, {n} at once through {way} (MB)", None,
                                statistics.median(mb for _, mb in runs[processes]) / n, None))

        log(f"time to first token: {settings.ttft_prompt_bytes}-byte prompt, {settings.repeats} rounds")
        long_prompt = _prompt(settings.ttft_prompt_bytes, settings.seed + 1)
        ttft = {"reference": [], "xldemo": []}
        for _ in range(settings.repeats):
            ttft["reference"].append(_reference_seconds(reference, long_prompt, 1))
            ttft["xldemo"].append(_xldemo_first_token_seconds(checkpoint, long_prompt, settings.decoder))
        ref_s, our_s = (statistics.median(ttft[s]) for s in ("reference", "xldemo"))
        rows.append(Row(f"time to first token, {_size(settings.ttft_prompt_bytes)} prompt (s)", ref_s, our_s,
                        ref_s / our_s))

        growth = {}
        for size in _sizes(settings.memory_prompt_bytes):
            log(f"peak memory: {_size(size)} prompt, one fresh process per side")
            growth[size] = {side: _peak_rss_growth_in_subprocess(side, folder, size, settings)
                            for side in ("reference", "xldemo")}
            ref_mb, our_mb = growth[size]["reference"], growth[size]["xldemo"]
            rows.append(Row(f"peak RSS growth, {_size(size)} prompt (MB)", ref_mb, our_mb, _ratio(ref_mb, our_mb)))
        if len(growth) > 1:
            small, large = min(growth), max(growth)
            ref_mb, our_mb = (growth[large][s] - growth[small][s] for s in ("reference", "xldemo"))
            rows.append(Row(f"peak RSS, {_size(large)} prompt minus {_size(small)} prompt (MB)", ref_mb, our_mb,
                            _ratio(ref_mb, our_mb)))
    about = {"model": source, "parameters": sum(p.numel() for p in net.parameters()), "decoder": decoder,
             "threads": torch.get_num_threads(), "torch": torch.__version__,
             "date": time.strftime("%Y-%m-%d"), "new_tokens": settings.new_tokens, "repeats": settings.repeats}
    return rows, about


def format_table(rows: list[Row], about: dict) -> str:
    """A Markdown table, with what it was measured on underneath."""
    lines = ["| | XLAutoregressiveWrapper.generate | xldemo | ratio (> 1: xldemo better) |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.metric} | {_number(row.reference)} | {_number(row.xldemo)} | "
                     f"{'—' if row.ratio is None else f'{row.ratio:.2f}x'} |")
    lines.append("")
    lines.append(f"{about['model']} ({about['parameters'] / 1e6:.1f}M parameters), xldemo's {about['decoder']} decoder, "
                 f"{about['threads']} torch threads, torch {about['torch']}, {about['date']}; medians of "
                 f"{about['repeats']} interleaved rounds, decode speed from {about['new_tokens']} tokens minus 1.")
    return "\n".join(lines)


def _checkpoint_folder(settings: BenchSettings, scratch: Path) -> tuple[Path, str]:
    """A checkpoint folder every process can load: the one named, the shipped one, or a random model saved."""
    if settings.checkpoint:
        return Path(settings.checkpoint), settings.checkpoint
    if not settings.random_config and (DEFAULT_CHECKPOINT / "model.safetensors").is_file():
        return DEFAULT_CHECKPOINT, "the shipped checkpoint"
    config_path = Path(settings.random_config or RANDOM_CONFIG)
    config = read_config(config_path)
    torch.manual_seed(settings.seed)
    save_checkpoint(build_model(config), config, scratch / "random")
    return scratch / "random", f"a random model of {config_path.name}'s shape"


def _reference(net):
    from x_transformers import XLAutoregressiveWrapper

    # eval(): generate's eval_decorator restores the wrapper's training flag on the shared net afterwards
    return XLAutoregressiveWrapper(net).eval()


def _decoder_path(checkpoint, settings: BenchSettings) -> str:
    events = generate(checkpoint, [0], GenerationSettings(max_new_tokens=1, decoder=settings.decoder))
    return next(e.decoder for e in events if isinstance(e, Started))


def _reference_seconds(reference, prompt: bytes, new_tokens: int) -> float:
    began = time.perf_counter()
    reference.generate(torch.tensor([list(prompt)]), new_tokens, temperature=0.0)
    return time.perf_counter() - began


def _xldemo_seconds(checkpoint, prompt: bytes, new_tokens: int, decoder: str, details: bool = False) -> float:
    began = time.perf_counter()
    for _ in generate(checkpoint, list(prompt), GenerationSettings(max_new_tokens=new_tokens, temperature=0,
                                                                   decoder=decoder, details=details)):
        pass
    return time.perf_counter() - began


def _xldemo_first_token_seconds(checkpoint, prompt: bytes, decoder: str) -> float:
    began = time.perf_counter()
    events = generate(checkpoint, list(prompt), GenerationSettings(max_new_tokens=1, temperature=0, decoder=decoder))
    next(e for e in events if isinstance(e, Token))
    return time.perf_counter() - began


def _serving_run(checkpoint, prompt: bytes, streams: int, new_tokens: int, processes: int = 0
                 ) -> tuple[list[float], float]:
    """Each stream's decode tokens/s, as its Finished reports it, of `streams` streams sampled at once (seeds of
    their own) from one prompt through a fresh scheduler (processes 0) or a fresh DecodePool of that many processes;
    and the MB by which the resident memory that decodes them grew meanwhile, at its peak: this process's with the
    decoder's buffers among it, or the children's, whose buffers are allocated when they start."""
    pool = DecodePool(checkpoint, processes) if processes else None
    if pool is not None:
        pool.live()  # every child answers once it has built the checkpoint: what follows is the runs alone
    pids = [worker.process.pid for worker in pool.workers] if pool is not None else ["self"]
    before = sum(reset_peak_rss(pid) for pid in pids)  # before the in-process scheduler allocates its buffers
    scheduler, finished = pool or Scheduler(checkpoint, max_batch=streams), [None] * streams

    def stream(i: int) -> None:
        *_, finished[i] = scheduler.generate(list(prompt), GenerationSettings(max_new_tokens=new_tokens,
                                                                               temperature=1.0, seed=i))

    try:
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [f.decode_tokens_per_s for f in finished], (sum(peak_rss(pid) for pid in pids) - before) / 2**20
    finally:
        if pool is not None:
            pool.retire()


def _cli_speed(folder: Path, prompt: bytes, settings: BenchSettings) -> tuple[float, float]:
    """Tokens/s from the wall time of a long and a 1-token CLI run, and the median the JSON reports."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as prompt_file:
        prompt_file.write(prompt)
        prompt_file.flush()

        def run(new_tokens: int) -> tuple[float, dict]:
            command = [sys.executable, "-m", "xldemo", "generate", "--checkpoint", str(folder), "--prompt-file",
                       prompt_file.name, "--max-new-tokens", str(new_tokens), "--temperature", "0", "--json",
                       "--decoder", settings.decoder, "--threads", str(settings.threads or torch.get_num_threads())]
            began = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - began
            if done.returncode != 0:
                raise XLDemoError(f"the CLI failed: {done.stderr.strip().splitlines()[-1:]}")
            return seconds, json.loads(done.stdout.strip().splitlines()[-1])

        per_token, reported = [], []
        for _ in range(settings.cli_repeats):
            (long, report), (short, _) = run(settings.cli_new_tokens), run(1)
            per_token.append((long - short) / (settings.cli_new_tokens - 1))
            reported.append(report["decode_tokens_per_s"])
    return 1 / statistics.median(per_token), statistics.median(reported)


def _app_speed(folder: Path, prompt: bytes, settings: BenchSettings) -> float:
    """The tokens/s of the app's stats line, median of greedy runs of cli_new_tokens tokens, called through
    gradio_client."""
    from gradio_client import Client

    from .web.local import served_app

    with served_app(folder) as url:
        client = Client(url, verbose=False, analytics_enabled=False)
        text = bytes(32 + b % 95 for b in prompt).decode()  # the app takes text: printable ASCII, one byte each
        rates = []
        for _ in range(settings.app_repeats):
            _, stats = client.predict(text, settings.cli_new_tokens, 0.0, api_name="/generate")
            rates.append(float(re.search(r"<b>([\d.]+)</b> tokens/s", stats).group(1)))
    return statistics.median(rates)


def _peak_rss_growth_in_subprocess(side: str, folder: Path, prompt_bytes: int, settings: BenchSettings) -> float:
    """Measured in a fresh process, so nothing the other side or an earlier size allocated is counted or reused."""
    args = dict(side=side, folder=str(folder), prompt_bytes=prompt_bytes, new_tokens=settings.new_tokens,
                decoder=settings.decoder, threads=settings.threads, seed=settings.seed)
    code = "import json, sys; from xldemo.bench import peak_rss_growth; print(peak_rss_growth(**json.loads(sys.argv[1])))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise XLDemoError(f"memory measurement failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(done.stdout.strip().splitlines()[-1])


def peak_rss_growth(side: str, folder: str, prompt_bytes: int, new_tokens: int, decoder: str = "auto",
                    threads: int = 0, seed: int = 0) -> float:
    """MB by which this process's peak resident memory grows while side (reference or xldemo) turns a fresh
    prompt_bytes prompt into new_tokens tokens: from the loaded model to the end, prompt conversion included."""
    if threads:
        torch.set_num_threads(threads)
    checkpoint = load_checkpoint(folder)
    prompt = _prompt(prompt_bytes, seed)
    before = reset_peak_rss()
    if side == "reference":
        _reference_seconds(_reference(checkpoint.model), prompt, new_tokens)
    else:
        _xldemo_seconds(checkpoint, prompt, new_tokens, decoder)
    return (peak_rss() - before) / 2**20


def reset_peak_rss(pid: int | str = "self") -> int:
    """The resident bytes of process pid (default: this one) now, after making them the peak (Linux: VmHWM is reset
    through clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return resident_bytes(pid)


def peak_rss(pid: int | str = "self") -> int:
    """The most bytes process pid (default: this one) has held resident since the last reset_peak_rss."""
    return _status_bytes("VmHWM", pid)


def resident_bytes(pid: int | str = "self") -> int:
    return _status_bytes("VmRSS", pid)


def _status_bytes(key: str, pid: int | str = "self") -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M).group(1)) * 1024


def _prompt(length: int, seed: int) -> bytes:
    """Random bytes: every prompt token costs the same, and byte models take any byte."""
    return bytes(torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(seed)).tolist())


def _sizes(text: str, name: str = "memory_prompt_bytes", least: int = 1, required: bool = False) -> list[int]:
    """text's comma-separated counts, each `least` or more; empty is none, refused where required."""
    try:
        sizes = number_list(text)
    except ValueError:
        sizes = [least - 1]
    if any(s < least for s in sizes) or (required and not sizes):
        raise XLDemoError(f"{name} must be comma-separated counts of {least} or more, got {text!r}")
    return sizes


def _size(n: int) -> str:
    for unit, scale in (("MB", 2**20), ("KB", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _ratio(reference: float, ours: float) -> float | None:
    return reference / ours if ours > 1 and reference > 1 else None


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
