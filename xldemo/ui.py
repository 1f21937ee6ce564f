"""The Gradio app: streaming XL generation with its segments in view, memory on vs off, and per-byte surprisal."""

import os

# before gradio or huggingface_hub is imported: the app reports to no outside host
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from . import render  # noqa: E402
from .checkpoint import CONFIG_FILE, DEFAULT_CHECKPOINT, REPO_ID, SHIPPED, Checkpoint, load_checkpoint  # noqa: E402
from .engine import Finished, GenerationSettings, SegmentStarted, Started, Token, WarmupProgress, generate  # noqa: E402
from .errors import XLDemoError  # noqa: E402
from .examples import load_examples  # noqa: E402
from .surprisal import surprisal_bits  # noqa: E402

# limits, stated in the app; the server enforces them whatever a client sends
MAX_PROMPT_BYTES = 256 * 1024
MAX_UPLOAD_BYTES = MAX_PROMPT_BYTES
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
MAX_SEED = 2**53 - 1  # what a browser's number field holds exactly
SURPRISAL_BYTES = 8 * 1024
PROMPT_SHOWN_BYTES = 32 * 1024  # earlier prompt segments are folded into one line of the view
UPDATE_EVERY_S = 0.08  # at most this often a streamed update, besides the first token, boundaries and the end
CACHE_SIZE = 2  # checkpoints held in memory
THEME = gr.themes.Soft(primary_hue="blue", neutral_hue="slate").set(
    button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
    button_primary_text_color="white")
# ssr_mode off: Spaces would otherwise render on a Node server, a different page from the one tested here
# On a phone the two columns stack: without this, Generate and the output would sit below every setting. The
# input column's children join the stack, and the settings move after the output.
PHONE_CSS = """
@media (max-width: 720px) {
  #xl-main { flex-direction: column; }
  #xl-input { display: contents; }
  #xl-output { order: 1; width: 100%; }
  #xl-input > .xl-settings { order: 2; }
}
"""
LAUNCH_OPTIONS = {"max_file_size": "1mb", "theme": THEME, "ssr_mode": False, "css": PHONE_CSS}


class UserError(gr.Error):
    """A bad input, told to the user: not a server fault, so no traceback in the log."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)


@dataclass(frozen=True)
class Slider:
    label: str
    minimum: float
    maximum: float
    step: float
    value: float
    info: str = ""

    def component(self, elem_id: str) -> gr.Slider:
        return gr.Slider(self.minimum, self.maximum, value=self.value, step=self.step, label=self.label,
                         info=self.info or None, elem_id=elem_id)

    def check(self, name: str, value, whole: bool = False):
        """value, or gr.Error if it is not a number in [minimum, maximum] (a whole one if whole)."""
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (whole and value != int(value)) or not self.minimum <= value <= self.maximum):
            kind = "a whole number" if whole else "a number"
            raise UserError(f"{name} must be {kind} from {self.minimum:g} to {self.maximum:g}, got {value!r}")
        return int(value) if whole else float(value)


SAMPLING = {
    "max_new_tokens": Slider("Max new tokens", 1, 4096, 1, 400, "one token is one byte"),
    "temperature": Slider("Temperature", 0.0, 2.0, 0.05, 0.8, "0 is greedy"),
    "top_k": Slider("Top-k", 0, 256, 1, 0, "0 is off"),
    "top_p": Slider("Top-p", 0.01, 1.0, 0.01, 0.95, "1 is off"),
    "min_p": Slider("Min-p", 0.0, 0.99, 0.01, 0.0, "0 is off"),
    "repetition_penalty": Slider("Repetition penalty", 0.5, 2.0, 0.05, 1.0, "1 is off"),
}
WHOLE = {"max_new_tokens", "top_k"}
DEFAULT_MEM_LEN = 256  # the memory slider's range when the default checkpoint cannot be read at start


# checkpoints: shipped folders, the configured default, or Hub repo ids; loaded once, shared read-only

_cache: OrderedDict[str, Checkpoint] = OrderedDict()
_cache_lock = threading.Lock()


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoint folders under checkpoints/."""
    return sorted(p.name for p in SHIPPED.iterdir() if (p / CONFIG_FILE).is_file()) if SHIPPED.is_dir() else []


def configured_checkpoint() -> str:
    """XLDEMO_CHECKPOINT (a folder or a Hub repo id) if set, else the shipped default's name."""
    return os.environ.get("XLDEMO_CHECKPOINT") or DEFAULT_CHECKPOINT.name


def checkpoint_source(name, default: str) -> str:
    """Where to load a checkpoint named in the UI from: a shipped name, the configured default, or a Hub repo
    id. Other local paths are refused: a client must not make the server read arbitrary folders."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("Choose a checkpoint: a shipped one, or a Hugging Face Hub repo id (owner/name).")
    name = name.strip()
    if name in shipped_checkpoints() or name == default == DEFAULT_CHECKPOINT.name:
        return str(SHIPPED / name)  # the default's full path makes a clearer error while it is missing
    if name == default:
        return name
    if REPO_ID.match(name) and ".." not in name and not Path(name).expanduser().exists():
        return name
    shipped = ", ".join(shipped_checkpoints()) or "none"
    raise UserError(f"Unknown checkpoint {name!r}: choose a shipped one ({shipped}) or type a Hugging Face Hub "
                    f"repo id (owner/name).")


def cached_checkpoint(source: str) -> Checkpoint:
    """The checkpoint at source, loaded once; the least recently used is dropped beyond CACHE_SIZE."""
    with _cache_lock:
        if source in _cache:
            _cache.move_to_end(source)
            return _cache[source]
    checkpoint = load_checkpoint(source)  # outside the lock: a slow download must not hold up other users
    with _cache_lock:
        _cache[source] = checkpoint
        _cache.move_to_end(source)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return checkpoint


def _local_config(source: str) -> dict | None:
    """config.json of a local checkpoint folder, read without loading weights; None if there is none."""
    path = Path(source).expanduser() / CONFIG_FILE
    if not path.is_file():
        path = SHIPPED / source / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def model_info(checkpoint: Checkpoint) -> str:
    layers = checkpoint.config["attn_layers"]
    parameters = sum(p.numel() for p in checkpoint.model.parameters())
    return render.stats_line([(f"{checkpoint.max_seq_len}", "tokens per segment"),
                              (f"{checkpoint.max_mem_len}", "memory per layer"),
                              (f"{layers.get('depth', '?')} × {layers.get('dim', '?')}", "layers × width"),
                              (f"{parameters / 1e6:.1f} M", "parameters")])


# input checks: everything a client sends is checked here, whatever the UI's sliders allow

def check_prompt(prompt) -> str:
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise UserError(f"The prompt must be text, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise UserError("The prompt is empty: type some text, pick an example, or load a .txt file.")
    size = len(prompt.encode("utf-8", errors="surrogatepass"))
    if size > MAX_PROMPT_BYTES:
        raise UserError(f"The prompt is {size:,} bytes; the limit is {MAX_PROMPT_BYTES:,} bytes (256 KB).")
    return prompt


def parse_stop(stop) -> tuple[str, ...]:
    """One stop string per line; \\n and \\t stand for a newline and a tab, \\\\ for a backslash."""
    if stop is None:
        return ()
    if not isinstance(stop, str):
        raise UserError("Stop strings must be text: one per line.")
    strings = tuple(_unescape(line) for line in stop.split("\n") if line)
    if len(strings) > MAX_STOP_STRINGS:
        raise UserError(f"At most {MAX_STOP_STRINGS} stop strings, got {len(strings)}.")
    if any(len(s) > MAX_STOP_CHARS for s in strings):
        raise UserError(f"A stop string may have at most {MAX_STOP_CHARS} characters.")
    return strings


def _unescape(line: str) -> str:
    out, chars = [], iter(line)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "")
            out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(nxt, c + nxt))
        else:
            out.append(c)
    return "".join(out)


def check_seed(seed) -> int:
    """The seed to use: -1 (or none) draws one, so the stats line can show it and a rerun can repeat it."""
    seed = -1 if seed is None else seed
    if (isinstance(seed, bool) or not isinstance(seed, (int, float)) or not math.isfinite(seed)
            or seed != int(seed) or not -1 <= seed <= MAX_SEED):
        raise UserError(f"Seed must be a whole number from 0 to {MAX_SEED}, or -1 for a random one; got {seed!r}.")
    return random.SystemRandom().randrange(2**31) if seed == -1 else int(seed)


def check_mem_len(mem_len, checkpoint: Checkpoint) -> int:
    limit = checkpoint.max_mem_len
    if (isinstance(mem_len, bool) or not isinstance(mem_len, (int, float)) or not math.isfinite(mem_len)
            or mem_len != int(mem_len) or not 0 <= mem_len <= limit):
        raise UserError(f"Memory length must be a whole number from 0 (off) to {limit} for this checkpoint, "
                        f"got {mem_len!r}.")
    return int(mem_len)


def settings_from_inputs(checkpoint: Checkpoint, max_new_tokens, temperature, top_k, top_p, min_p,
                         repetition_penalty, seed, stop, mem_len) -> GenerationSettings:
    values = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                  repetition_penalty=repetition_penalty)
    checked = {name: SAMPLING[name].check(SAMPLING[name].label, value, whole=name in WHOLE)
               for name, value in values.items()}
    try:
        return GenerationSettings(**checked, seed=check_seed(seed), stop=parse_stop(stop),
                                  mem_len=check_mem_len(mem_len, checkpoint))
    except XLDemoError as e:
        raise UserError(str(e)) from None


# one engine run, seen as HTML

class Run:
    """An engine run and its view: the prompt and generated text by segment, and a status line."""

    def __init__(self, checkpoint: Checkpoint, ids: list[int], settings: GenerationSettings, live_rate: bool = True):
        self.live_rate = live_rate
        # the prompt's view is built before the engine starts, so its clock does not count it
        segments = render.split_segments(ids, checkpoint.max_seq_len, checkpoint.tokenizer.stream_decoder())
        self.view = render.SegmentedText()
        render.add_prompt(self.view, segments, PROMPT_SHOWN_BYTES)
        self.segment = len(segments) - 1
        self.events = generate(checkpoint, ids, settings)
        self.started: Started | None = None
        self.finished: Finished | None = None
        self.warmup = (0, 0)
        self.tokens, self.first_token_at = 0, None
        self.new_segment = False  # a generated segment opened since the last update

    def step(self) -> Started | WarmupProgress | Token | Finished | None:
        """Runs the engine to its next event worth showing; None once it has ended."""
        for event in self.events:
            if isinstance(event, Token):
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                self.tokens += 1
                self.view.add(event.segment, "generated", event.text)
                return event
            if isinstance(event, SegmentStarted):
                if event.source == "generated":
                    self.view.open_segment(event.index)
                    self.segment, self.new_segment = event.index, True
                continue
            if isinstance(event, Started):
                self.started = event
            elif isinstance(event, WarmupProgress):
                self.warmup = (event.done, event.total)
            elif isinstance(event, Finished):
                self.finished = event
            return event
        return None

    def due_now(self, event) -> bool:
        """Whether an update should go out whatever the throttle says: the prompt at the start, the first
        token, a new segment, the end."""
        return (isinstance(event, (Started, Finished)) or (isinstance(event, Token) and self.tokens == 1)
                or self.new_segment)

    def status(self) -> str:
        if self.finished:
            chips = render.generation_stats(self.finished, self.started)
            if not self.live_rate:  # interleaved runs share the clock, so their rates say little
                chips = [c for c in chips if c[1] not in ("tokens/s", "to first token")]
            return render.stats_line(chips)
        if self.first_token_at is None:
            done, total = self.warmup
            if total:
                return render.progress_line("warming up memory: prompt segment", done, total)
            return render.live_line([], "reading the prompt…")
        chips = [(f"{self.tokens}", "new tokens"), (f"segment {self.segment}", "")]
        elapsed = time.perf_counter() - self.first_token_at
        if self.live_rate and self.tokens > 1 and elapsed > 0:
            chips.append((f"{(self.tokens - 1) / elapsed:.1f}", "tokens/s"))
        return render.live_line(chips, "generating…")

    def close(self) -> None:
        self.events.close()


class Throttle:
    """Says when a streamed update is due: at most every UPDATE_EVERY_S seconds, unless forced."""

    def __init__(self):
        self.last = 0.0

    def due(self, force: bool = False) -> bool:
        now = time.perf_counter()
        if force or now - self.last >= UPDATE_EVERY_S:
            self.last = now
            return True
        return False


# handlers: generators yielding the growing outputs; every input after the prompt has a default

@dataclass(frozen=True)
class App:
    default_checkpoint: str

    def load(self, name) -> Checkpoint:
        try:
            return cached_checkpoint(checkpoint_source(name, self.default_checkpoint))
        except XLDemoError as e:
            raise UserError(str(e)) from None

    def prepare(self, prompt, checkpoint, mem_len, **inputs) -> tuple[Checkpoint, list[int], GenerationSettings]:
        """mem_len None is the checkpoint's own."""
        prompt = check_prompt(prompt)
        model = self.load(checkpoint or self.default_checkpoint)
        mem_len = model.max_mem_len if mem_len is None else mem_len
        return model, model.tokenizer.encode(prompt), settings_from_inputs(model, mem_len=mem_len, **inputs)

    def generate(self, prompt, max_new_tokens=SAMPLING["max_new_tokens"].value,
                 temperature=SAMPLING["temperature"].value, top_k=SAMPLING["top_k"].value,
                 top_p=SAMPLING["top_p"].value, min_p=SAMPLING["min_p"].value,
                 repetition_penalty=SAMPLING["repetition_penalty"].value, seed=-1, stop="", mem_len=None,
                 checkpoint=None):
        """Streams (text HTML, stats HTML) as the model writes."""
        model, ids, settings = self.prepare(
            prompt, checkpoint, mem_len, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
            top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop)
        runs, throttle = [], Throttle()
        try:
            runs.append(run := Run(model, ids, settings))
            while event := run.step():
                if throttle.due(force=run.due_now(event)):
                    run.new_segment = False
                    yield run.view.html(), run.status()
        except XLDemoError as e:  # the engine's own checks, such as a prompt byte beyond a small vocabulary
            raise UserError(str(e)) from None
        finally:
            for run in runs:
                run.close()

    def compare(self, prompt, max_new_tokens=SAMPLING["max_new_tokens"].value,
                temperature=SAMPLING["temperature"].value, top_k=SAMPLING["top_k"].value,
                top_p=SAMPLING["top_p"].value, min_p=SAMPLING["min_p"].value,
                repetition_penalty=SAMPLING["repetition_penalty"].value, seed=-1, stop="", mem_len=None,
                checkpoint=None):
        """Streams (memory-on HTML, memory-off HTML, stats HTML): two runs with one seed, token by token; a
        memory length of 0 compares the checkpoint's own with none."""
        model, ids, on = self.prepare(
            prompt, checkpoint, None if mem_len == 0 else mem_len, max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
            seed=seed, stop=stop)
        off = replace(on, mem_len=0)
        runs, throttle = [], Throttle()
        try:
            runs += [Run(model, ids, on, live_rate=False), Run(model, ids, off, live_rate=False)]
            alive = [True, True]
            while any(alive):
                events = [run.step() if alive[i] else None for i, run in enumerate(runs)]
                alive = [event is not None for event in events]
                if throttle.due(force=any(run.due_now(e) for run, e in zip(runs, events) if e) or not any(alive)):
                    for run in runs:
                        run.new_segment = False
                    yield runs[0].view.html(), runs[1].view.html(), self._compare_status(runs, on)
        except XLDemoError as e:
            raise UserError(str(e)) from None
        finally:
            for run in runs:
                run.close()

    @staticmethod
    def _compare_status(runs: list[Run], settings: GenerationSettings) -> str:
        on, off = runs
        note = f"same seed {settings.seed}; memory {settings.mem_len} vs 0 tokens per layer; the runs take turns"
        if on.finished and off.finished:
            return render.stats_line([(f"{on.finished.segments}", "segments"),
                                      (f"{on.finished.memory_tokens}", "memory tokens with memory on"),
                                      (f"{off.finished.memory_tokens}", "off")], note)
        if on.first_token_at is None:
            return on.status()  # reading the prompt, warming memory up
        return render.live_line([(f"{on.tokens}", "tokens each")], note)

    def surprisal(self, prompt, checkpoint=None):
        """Streams (summary HTML, memory-on HTML, memory-off HTML, bits-saved HTML): the prompt's bytes coloured
        by the bits the model spends on them, with memory and without, and by the difference."""
        prompt = check_prompt(prompt)
        model = self.load(checkpoint or self.default_checkpoint)
        all_ids = model.tokenizer.encode(prompt)
        ids = all_ids[:SURPRISAL_BYTES]
        if len(ids) < 2:
            raise UserError("The prompt needs at least two bytes to score.")
        yield render.live_line([], f"scoring {len(ids):,} bytes with memory…"), "", "", ""
        bits_on = surprisal_bits(model, ids, memory=True)
        yield render.live_line([], f"scoring {len(ids):,} bytes without memory…"), "", "", ""
        bits_off = surprisal_bits(model, ids, memory=False)
        seg_len = model.max_seq_len
        saved = [off - on for on, off in zip(bits_on, bits_off)]
        views = [render.coloured_html(render.byte_pieces(ids, values, seg_len, model.tokenizer.stream_decoder()),
                                      scale)
                 for values, scale in ((bits_on, render.SURPRISAL), (bits_off, render.SURPRISAL),
                                       (saved, render.SAVING))]
        summary = render.surprisal_summary(bits_on, bits_off, seg_len, len(ids), len(all_ids))
        yield summary + render.SURPRISAL.legend() + render.SAVING.legend(), *views

    def info(self, checkpoint):
        """(model info HTML, memory slider update) for the chosen checkpoint."""
        try:
            model = self.load(checkpoint)
        except gr.Error as e:
            return render.message_line(e.message), gr.update()
        return model_info(model), gr.update(maximum=model.max_mem_len, value=model.max_mem_len)


def read_upload(path) -> str:
    """The text of an uploaded .txt file, for the prompt box."""
    if not path:
        return gr.update()
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_BYTES:
        raise UserError(f"The file is {size:,} bytes; the limit is {MAX_UPLOAD_BYTES:,} bytes (256 KB).")
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("The file is not UTF-8 text.") from None


# the page

HEADER = """
<div class="xl-header">
  <h1>xldemo <span>Transformer-XL, streaming</span></h1>
  <p>A byte-level Transformer-XL reads your prompt one segment at a time, carrying a memory of hidden states from
  segment to segment, then writes on, token by token. The view marks every segment, so you can see where memory
  takes over from attention.</p>
</div>
"""
HEADER_CSS = """
.xl-header h1 { margin: 0.2rem 0 0.1rem; font-size: 1.6rem; font-weight: 700; }
.xl-header h1 span { font-weight: 400; color: var(--body-text-color-subdued); font-size: 1.1rem; margin-left: 0.4rem; }
.xl-header p { margin: 0 0 0.4rem; max-width: 60rem; color: var(--body-text-color-subdued); }
"""
LIMITS = (f"Prompts up to {MAX_PROMPT_BYTES // 1024} KB (UTF-8); a .txt file up to {MAX_UPLOAD_BYTES // 1024} KB "
          f"replaces the prompt box.")
ABOUT = f"""
### How to read it
The model sees text in **segments** of a fixed number of bytes (one byte is one token). Each segment attends to
itself and to the **memory**: hidden states the model kept from the segments before. A long prompt is first folded
into memory, one segment at a time (the **warm-up**), and then generation continues where the prompt ends.
Labels such as <span style="white-space:nowrap">`segment 3`</span> open each segment; prompt text is grey, generated
text is bold and underlined. Set memory length to 0 to turn memory off.

**Memory on/off** runs the model twice with the same seed, with and without memory.
**Surprisal** colours each byte of the prompt (its first {SURPRISAL_BYTES // 1024} KB) by how many bits the model
spent on it, with memory and without, and by the difference: segment 0 is the same either way (there is nothing to
remember yet); in the later segments, green marks what memory buys, such as names from a cast list.

Limits: prompts up to {MAX_PROMPT_BYTES // 1024} KB, up to {SAMPLING['max_new_tokens'].maximum} new tokens,
{MAX_STOP_STRINGS} stop strings of up to {MAX_STOP_CHARS} characters; surprisal scores the first
{SURPRISAL_BYTES // 1024} KB. Example prompts are passages of *The Tempest* and *Macbeth*, which the model never
saw in training.

### API
```python
from gradio_client import Client
job = Client("URL of this app").submit("Your prompt", api_name="/generate")
for text_html, stats_html in job:  # streams; every other input has a default
    ...
```
"""


def _html(value: str = "", **kwargs) -> gr.HTML:
    return gr.HTML(value, css_template=render.CSS, **kwargs)


# keeps a text view scrolled to its end as it grows, unless the reader has scrolled up; a new run follows again
FOLLOW_END = """
let follow = true, shown = 0;
element.addEventListener('scroll', (event) => {
  const view = event.target;
  if (view.classList && view.classList.contains('xl-view'))
    follow = view.scrollTop + view.clientHeight >= view.scrollHeight - 48;
}, true);
watch('value', () => {
  const length = (props.value || '').length;
  if (length < shown) follow = true;
  shown = length;
  const view = element.querySelector('.xl-view');
  if (view && follow) view.scrollTop = view.scrollHeight;
});
"""


def _text_view(empty: str, elem_id: str, follow: bool = True) -> gr.HTML:
    """A scrolling box for segmented text, following its end as it grows if follow; shows `empty` until it
    has text."""
    return gr.HTML("", html_template=f'<div class="xl-view" data-empty="{render.escape(empty)}">${{value}}</div>',
                   css_template=render.CSS, js_on_load=FOLLOW_END if follow else None, elem_id=elem_id,
                   container=True, padding=True)


def build_demo(default_checkpoint: str | None = None, concurrency: int | None = None) -> gr.Blocks:
    """The app. default_checkpoint: a folder or Hub repo id (default: XLDEMO_CHECKPOINT, else the shipped one);
    concurrency: runs at once per event (default: XLDEMO_CONCURRENCY, else 2)."""
    default = default_checkpoint or configured_checkpoint()
    concurrency = concurrency or int(os.environ.get("XLDEMO_CONCURRENCY", "2"))
    app = App(default)
    config = _local_config(default) or {}
    max_mem = config.get("max_mem_len", DEFAULT_MEM_LEN)
    choices = shipped_checkpoints()
    if default not in choices:
        choices = [default, *choices]
    examples = load_examples()

    with gr.Blocks(title="xldemo: Transformer-XL streaming generation") as demo:
        gr.HTML(HEADER, css_template=HEADER_CSS)
        with gr.Row(equal_height=False, elem_id="xl-main"):
            with gr.Column(scale=5, min_width=320, elem_id="xl-input"):
                prompt = gr.Textbox(label="Prompt", lines=9, max_lines=16, autoscroll=False,
                                    placeholder="Type or paste a long passage, pick an example below, or load a "
                                                ".txt file.", elem_id="prompt")
                with gr.Row(equal_height=True):
                    upload = gr.UploadButton("Load a .txt file", file_types=[".txt"], size="sm", scale=0,
                                             min_width=150)
                    gr.Markdown(LIMITS, elem_classes="xl-limits")
                gr.Examples([[text] for text in examples.values()], inputs=[prompt],
                            example_labels=list(examples), label="Example prompts from the held-out plays")
                with gr.Accordion("Sampling", open=False, elem_classes="xl-settings"):
                    with gr.Row():
                        sliders = {name: spec.component(name) for name, spec in SAMPLING.items()}
                    with gr.Row():
                        seed = gr.Number(-1, label="Seed", precision=0, elem_id="seed", minimum=-1, maximum=MAX_SEED,
                                         info="-1 draws one; the stats line shows it")
                        stop = gr.Textbox("", label="Stop strings", lines=1, max_lines=4,
                                          info="one per line; \\n stands for a newline")
                with gr.Accordion("Model and memory", open=True, elem_classes="xl-settings"):
                    checkpoint = gr.Dropdown(choices, value=default, allow_custom_value=True, label="Checkpoint",
                                             info="a shipped checkpoint, or type a Hugging Face Hub repo id "
                                                  "(owner/name)")
                    mem_len = gr.Slider(0, max_mem, value=max_mem, step=1, label="Memory length",
                                        info="hidden states kept per layer, in tokens; 0 turns memory off")
                    info = _html(render.message_line("loading the checkpoint…"))
            with gr.Column(scale=7, min_width=340, elem_id="xl-output"):
                with gr.Tabs():
                    with gr.Tab("Generate", id="generate"):
                        with gr.Row():
                            run_button = gr.Button("Generate", variant="primary", elem_id="generate",
                                                   min_width=100)
                            stop_button = gr.Button("Stop", variant="stop", elem_id="stop", min_width=100)
                        stats = _html(render.message_line("Press Generate to stream text segment by segment."),
                                      elem_id="stats")
                        stream = _text_view("Generated text appears here, segment by segment.", "stream")
                    with gr.Tab("Memory on/off", id="compare"):
                        with gr.Row():
                            compare_button = gr.Button("Compare", variant="primary", elem_id="compare",
                                                       min_width=100)
                            compare_stop = gr.Button("Stop", variant="stop", elem_id="compare-stop", min_width=100)
                        compare_stats = _html(render.message_line(
                            "Two runs, one seed: with memory and without."), elem_id="compare-stats")
                        with gr.Row():
                            with gr.Column(min_width=260):
                                gr.Markdown("**Memory on**")
                                memory_on = _text_view("With memory.", "memory-on")
                            with gr.Column(min_width=260):
                                gr.Markdown("**Memory off**")
                                memory_off = _text_view("Without memory.", "memory-off")
                    with gr.Tab("Surprisal", id="surprisal"):
                        with gr.Row():
                            score_button = gr.Button("Score the prompt", variant="primary", elem_id="score",
                                                     min_width=100)
                            score_stop = gr.Button("Stop", variant="stop", elem_id="score-stop", min_width=100)
                        summary = _html(render.message_line(
                            "How surprising each byte of the prompt is, with memory and without."),
                            elem_id="surprisal-summary")
                        with gr.Row():
                            with gr.Column(min_width=260):
                                gr.Markdown("**With memory**")
                                surprisal_on = _text_view("Bits per byte, with memory.", "surprisal-on",
                                                          follow=False)
                            with gr.Column(min_width=260):
                                gr.Markdown("**Without memory**")
                                surprisal_off = _text_view("Bits per byte, without memory.", "surprisal-off",
                                                           follow=False)
                        gr.Markdown("**What memory buys**: bits saved per byte; green where memory made a byte "
                                    "easier to predict, red where harder")
                        surprisal_saved = _text_view("Bits saved by memory, per byte.", "surprisal-saved",
                                                     follow=False)
        gr.Markdown(ABOUT, elem_classes="xl-about")

        inputs = [prompt, *sliders.values(), seed, stop, mem_len, checkpoint]
        # preprocess=False: the handlers check the raw values themselves, with messages that name the input
        generating = run_button.click(app.generate, inputs, [stream, stats], api_name="generate",
                                      concurrency_limit=concurrency, concurrency_id="model",
                                      show_progress="hidden", preprocess=False)
        comparing = compare_button.click(app.compare, inputs, [memory_on, memory_off, compare_stats],
                                         api_name="compare", concurrency_limit=concurrency, concurrency_id="model",
                                         show_progress="hidden", preprocess=False)
        scoring = score_button.click(app.surprisal, [prompt, checkpoint],
                                     [summary, surprisal_on, surprisal_off, surprisal_saved],
                                     api_name="surprisal", concurrency_limit=concurrency, concurrency_id="model",
                                     show_progress="hidden", preprocess=False)
        for button, event, status in ((stop_button, generating, stats), (compare_stop, comparing, compare_stats),
                                      (score_stop, scoring, summary)):
            button.click(None, cancels=[event])
            # after the run ends, however it ends: a status line still live means it was stopped
            event.then(_stopped, status, status, queue=False, api_visibility="private")
        upload.upload(read_upload, upload, prompt, api_visibility="private")
        checkpoint.change(app.info, checkpoint, [info, mem_len], api_visibility="private")
        demo.load(app.info, checkpoint, [info, mem_len], api_visibility="private")
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo


def _stopped(status: str) -> str:
    return render.message_line("Stopped.") if render.is_live(status) else gr.skip()


demo = build_demo()
