"""What the app takes in: its own limits, the generation inputs declared once, and their turning into
GenerationSettings (the one validator of generation settings)."""

import random
from dataclasses import dataclass
from pathlib import Path

from ..engine import GenerationSettings
from ..errors import XLDemoError

# the app's own limits, stated on the page; the server enforces them whatever a client sends
MAX_PROMPT_BYTES = 256 * 1024
MAX_UPLOAD_BYTES = MAX_PROMPT_BYTES
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
MAX_SEED = 2**53 - 1  # what a browser's number field holds exactly
DRAWN_SEEDS = 2**31  # a drawn seed is small enough to read off the stats line and type back
SURPRISAL_BYTES = 8 * 1024  # the Surprisal tab and the memory sweep score the prompt's first 8 KB
DEFAULT_MEM_LEN = 256  # the memory slider's range when the default checkpoint cannot be read at start


@dataclass(frozen=True)
class Spec:
    """A numeric input: its control's range and step, its default, and a line of help. gradio checks the range."""
    label: str
    minimum: float
    maximum: float
    step: float
    value: float
    info: str = ""


# keyed by GenerationSettings field
SAMPLING = {
    "max_new_tokens": Spec("Max new tokens", 1, 4096, 1, 400, "a token is a byte, for byte models"),
    "temperature": Spec("Temperature", 0.0, 2.0, 0.05, 0.8, "0 is greedy"),
    "top_k": Spec("Top-k", 0, 256, 1, 0, "0 is off"),
    "top_p": Spec("Top-p", 0.01, 1.0, 0.01, 0.95, "1 is off"),
    "min_p": Spec("Min-p", 0.0, 0.99, 0.01, 0.0, "0 is off"),
    "repetition_penalty": Spec("Repetition penalty", 0.5, 2.0, 0.05, 1.0, "1 is off"),
}
SEED = Spec("Seed", -1, MAX_SEED, 1, -1, "-1 draws one; the stats line shows it")

# the inputs of /generate and /compare, in order, and their defaults: every input but the prompt has one
INPUTS = ["prompt", *SAMPLING, "seed", "stop", "mem_len", "checkpoint"]
DATA_INPUTS = [*INPUTS, "details"]  # /generate_data: per-token details on request
INSPECT_INPUTS = [*INPUTS, "colour_by"]  # /inspect: the memory view, coloured by one of memory_html.COLOURINGS
DEFAULTS = {**{name: spec.value for name, spec in SAMPLING.items()}, "seed": SEED.value, "stop": "",
            "mem_len": None, "checkpoint": None,  # mem_len None: the checkpoint's own
            "details": False, "colour_by": "probability"}


def check_prompt(prompt) -> str:
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise XLDemoError(f"The prompt must be text, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise XLDemoError("The prompt is empty: type some text, pick an example, or load a .txt file.")
    size = len(prompt.encode("utf-8", errors="surrogatepass"))
    if size > MAX_PROMPT_BYTES:
        raise XLDemoError(f"The prompt is {size:,} bytes; the limit is {MAX_PROMPT_BYTES:,} bytes (256 KB).")
    return prompt


def parse_stop(stop) -> tuple[str, ...]:
    """One stop string per line; \\n and \\t stand for a newline and a tab, \\\\ for a backslash."""
    if stop is None:
        return ()
    if not isinstance(stop, str):
        raise XLDemoError("Stop strings must be text: one per line.")
    strings = tuple(_unescape(line) for line in stop.split("\n") if line)
    if len(strings) > MAX_STOP_STRINGS:
        raise XLDemoError(f"At most {MAX_STOP_STRINGS} stop strings, got {len(strings)}.")
    if any(len(s) > MAX_STOP_CHARS for s in strings):
        raise XLDemoError(f"A stop string may have at most {MAX_STOP_CHARS} characters.")
    return strings


def escape_stop(text: str) -> str:
    """The line of the stop box that parse_stop reads as text."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def settings_from_inputs(inputs: dict) -> GenerationSettings:
    """The inputs after the prompt and checkpoint (gradio has range-checked the numbers) as GenerationSettings;
    a seed of -1 is drawn here, small enough to show and to type back."""
    seed = _whole(inputs["seed"])
    if not isinstance(seed, int):  # the engine's own message would name its range, not this field's
        raise XLDemoError(f"The seed must be a whole number from -1 (draw one) to {MAX_SEED}, got {seed!r}.")
    if seed == -1:
        seed = random.SystemRandom().randrange(DRAWN_SEEDS)
    return GenerationSettings(**{name: _whole(inputs[name]) for name in SAMPLING}, seed=seed,
                              stop=parse_stop(inputs["stop"]), mem_len=_whole(inputs["mem_len"]),
                              details=inputs.get("details", False))


def read_upload(path: str) -> str:
    """The text of an uploaded .txt file, for the prompt box."""
    size = Path(path).stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise XLDemoError(f"The file is {size:,} bytes; the limit is {MAX_UPLOAD_BYTES:,} bytes (256 KB).")
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise XLDemoError("The file is not UTF-8 text.") from None


def _whole(value):
    """A whole float as an int (sliders and number fields send 400.0); anything else as it is, for
    GenerationSettings to accept or refuse."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _unescape(line: str) -> str:
    out, chars = [], iter(line)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "")
            out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(nxt, c + nxt))
        else:
            out.append(c)
    return "".join(out)
