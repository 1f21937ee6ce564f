"""The page: the Blocks layout, wired to the handlers, and the options it launches with."""

import os
from pathlib import Path

import gradio as gr

from ..checkpoint import shipped_checkpoints
from ..errors import XLDemoError
from ..examples import load_examples
from ..serving import MAX_BATCH, default_processes
from . import render
from .handlers import Handlers, of_inputs, stopped
from .inputs import (DATA_INPUTS, DEFAULT_MEM_LEN, DEFAULTS, INSPECT_INPUTS, MAX_PROMPT_BYTES, MAX_STOP_CHARS,
                     MAX_STOP_STRINGS, MAX_UPLOAD_BYTES, SAMPLING, SEED, SURPRISAL_BYTES, Spec)
from .memory_html import COLOURINGS
from .sources import configured_checkpoint, default_max_mem_len, env_number, hub_limits
from .view import TRAFFIC, Traffic

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_CONCURRENCY = MAX_BATCH  # runs at once, all events together: a full shared batch (XLDEMO_CONCURRENCY)
QUEUE_SIZE = 64  # requests waiting beyond those running; the next is told the queue is full (XLDEMO_QUEUE_SIZE)
SET_COLOURING = "(colouring) => { document.querySelectorAll('#inspect-view .xl-inspect')" \
                ".forEach((view) => { view.dataset.colour = colouring; }); }"


def launch_options() -> dict:
    """demo.launch's keyword arguments. ssr_mode off: Spaces would otherwise render on a Node server, a different
    page from the one tested here."""
    theme = gr.themes.Soft(primary_hue="blue", neutral_hue="slate").set(
        button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
        button_primary_text_color="white")
    return {"max_file_size": "1mb", "theme": theme, "ssr_mode": False, "css": _asset("phone.css")}


def configured_handlers(default_checkpoint: str | None = None) -> Handlers:
    """The handlers for default_checkpoint (default: XLDEMO_CHECKPOINT, else the shipped one) as the environment
    sets them up: XLDEMO_TIME_LIMIT, XLDEMO_DECODE_PROCESSES, XLDEMO_UPDATES_PER_S, and the Hub's limits (each
    refused in one line if it is not a number the server can use)."""
    updates = env_number("XLDEMO_UPDATES_PER_S", None, float, above=0)
    hub_limits()  # read at start too, so that a bad value stops the server rather than a visitor's request
    return Handlers(default_checkpoint or configured_checkpoint(),
                    env_number("XLDEMO_TIME_LIMIT", Handlers.time_limit_s, float, least=0),
                    # each process loads torch and the model: more than the cores only crowd them
                    processes=env_number("XLDEMO_DECODE_PROCESSES", default_processes(), int, least=0,
                                         most=os.cpu_count() or 1, why_most="this machine's cores"),
                    traffic=TRAFFIC if updates is None else Traffic(updates))


def start_decoding() -> None:
    """Starts the default checkpoint's decoding process with the server, not with the first page that loads: the
    child takes seconds to import torch, and the first visitor after a start waited for it (3.5-4.1 s from Generate
    to the first text, against 1.5 s once the child was up). A checkpoint that does not load starts nothing: the page
    says why."""
    try:
        configured_handlers().start_decoding()
    except XLDemoError:
        pass


def build_demo(default_checkpoint: str | None = None, concurrency: int | None = None) -> gr.Blocks:
    """The app. default_checkpoint: a folder or Hub repo id (default: XLDEMO_CHECKPOINT, else the shipped one);
    concurrency: runs at once (default: XLDEMO_CONCURRENCY, else the shared batch's size). XLDEMO_QUEUE_SIZE and
    XLDEMO_TIME_LIMIT (seconds) override the queue's length and a run's longest time; XLDEMO_DECODE_PROCESSES=0 keeps
    the shared batch in the server's process."""
    default = default_checkpoint or configured_checkpoint()
    concurrency = concurrency or env_number("XLDEMO_CONCURRENCY", DEFAULT_CONCURRENCY, int, least=1)
    handlers = configured_handlers(default)
    max_mem = default_max_mem_len(default, DEFAULT_MEM_LEN)
    choices = shipped_checkpoints()
    if default not in choices:
        choices = [default, *choices]
    examples = load_examples()

    # the reporting of usage to gradio's hosts is switched off here, for every way the app is started
    with gr.Blocks(title="xldemo: Transformer-XL streaming generation", analytics_enabled=False) as demo:
        gr.HTML(_asset("header.html"), css_template=_asset("header.css"))
        with gr.Row(equal_height=False, elem_id="xl-main"):
            with gr.Column(scale=5, min_width=320, elem_id="xl-input"):
                prompt = gr.Textbox(label="Prompt", lines=9, max_lines=16, autoscroll=False,
                                    placeholder="Type or paste a long passage, pick an example below, or load a "
                                                ".txt file.", elem_id="prompt")
                with gr.Row(equal_height=True):
                    upload = gr.UploadButton("Load a .txt file", file_types=[".txt"], size="sm", scale=0,
                                             min_width=150)
                    gr.Markdown(f"Prompts up to {MAX_PROMPT_BYTES // 1024} KB (UTF-8); a .txt file up to "
                                f"{MAX_UPLOAD_BYTES // 1024} KB replaces the prompt box.", elem_classes="xl-limits")
                gr.Examples([[text] for text in examples.values()], inputs=[prompt],
                            example_labels=list(examples), label="Example prompts from the held-out plays")
                with gr.Accordion("Sampling", open=False, elem_classes="xl-settings"):
                    with gr.Row():
                        sliders = [_slider(name, spec) for name, spec in SAMPLING.items()]
                    with gr.Row():
                        seed = gr.Number(SEED.value, label=SEED.label, elem_id="seed", minimum=SEED.minimum,
                                         maximum=SEED.maximum, info=SEED.info)
                        stop = gr.Textbox("", label="Stop strings", lines=1, max_lines=4,
                                          info="one per line; \\n stands for a newline")
                with gr.Accordion("Model and memory", open=True, elem_classes="xl-settings"):
                    checkpoint = gr.Dropdown(choices, value=default, allow_custom_value=True, label="Checkpoint",
                                             info="a shipped checkpoint, or type a Hugging Face Hub repo id "
                                                  "(owner/name)")
                    mem_len = _slider("mem_len", Spec("Memory length", 0, max_mem, 1, max_mem,
                                                      "hidden states kept per layer, in tokens; 0 turns memory off"))
                    info = _html(render.message_line("loading the checkpoint…"))
            with gr.Column(scale=7, min_width=340, elem_id="xl-output"):
                with gr.Tabs(overflow_behavior="wrap"):  # a phone shows every tab, not one and a menu
                    with gr.Tab("Generate", id="generate"):
                        run_button, run_stop, stats = _controls(
                            "Generate", "generate", "stop", "stats",
                            "Press Generate to stream text segment by segment.")
                        stream = _text_view("Generated text appears here, segment by segment.", "stream")
                    with gr.Tab("Memory on/off", id="compare"):
                        compare_button, compare_stop, compare_stats = _controls(
                            "Compare", "compare", "compare-stop", "compare-stats",
                            "Two runs, one seed: with memory and without.")
                        memory_on, memory_off = _side_by_side(
                            ("Memory on", "With memory.", "memory-on"), ("Memory off", "Without memory.", "memory-off"))
                    with gr.Tab("Surprisal", id="surprisal"):
                        score_button, score_stop, summary = _controls(
                            "Score the prompt", "score", "score-stop", "surprisal-summary",
                            "How surprising each byte of the prompt is, with memory and without.")
                        surprisal_on, surprisal_off = _side_by_side(
                            ("With memory", "Bits per byte, with memory.", "surprisal-on"),
                            ("Without memory", "Bits per byte, without memory.", "surprisal-off"), follow=False)
                        gr.Markdown("**What memory buys**: bits saved per byte; green where memory made a byte "
                                    "easier to predict, red where harder")
                        surprisal_saved = _text_view("Bits saved by memory, per byte.", "surprisal-saved",
                                                     follow=False)
                    with gr.Tab("Inside memory", id="inspect"):
                        inspect_button, inspect_stop, inspect_stats = _controls(
                            "Generate with details", "inspect", "inspect-stop", "inspect-stats",
                            "Generate, then hover or tap a generated token: its alternatives, and what it read.")
                        colour_by = gr.Radio(list(COLOURINGS), value=DEFAULTS["colour_by"],
                                             label="Colour the generated text by", elem_id="colour-by")
                        inspect_view = _text_view("Generated text with what each token read, from memory too.",
                                                  "inspect-view", script=_asset("inspect.js"),
                                                  css=_asset("inspect.css"))
                        gr.Markdown(_asset("inspect.md"), elem_classes="xl-about")
                        sweep_button, _, sweep_summary = _controls(
                            "Sweep memory length", "sweep", "sweep-stop", "sweep-summary",
                            "Bits per token of the prompt with memories from none to beyond the trained length.")
                        sweep_plot = gr.Plot(label="Bits per token against memory length", elem_id="sweep-plot",
                                             format="png")
        gr.Markdown(_asset("about.md").format(
            surprisal_kb=SURPRISAL_BYTES // 1024, prompt_kb=MAX_PROMPT_BYTES // 1024,
            max_new_tokens=SAMPLING["max_new_tokens"].maximum, stop_strings=MAX_STOP_STRINGS,
            stop_chars=MAX_STOP_CHARS), elem_classes="xl-about")

        inputs = [prompt, *sliders, seed, stop, mem_len, checkpoint]
        run = dict(concurrency_limit=concurrency, concurrency_id="model", show_progress="hidden")
        generating = run_button.click(of_inputs(handlers.generate), inputs, [stream, stats], api_name="generate",
                                      **run)
        comparing = compare_button.click(of_inputs(handlers.compare), inputs, [memory_on, memory_off, compare_stats],
                                         api_name="compare", **run)
        # the same runs as data, for API clients: controls the page does not show
        gr.Button(visible=False).click(of_inputs(handlers.generate_data, DATA_INPUTS),
                                       [*inputs, gr.Checkbox(False, visible=False)], gr.JSON(visible=False),
                                       api_name="generate_data", **run)
        inspecting = inspect_button.click(of_inputs(handlers.inspect, INSPECT_INPUTS), [*inputs, colour_by],
                                          [inspect_view, inspect_stats], api_name="inspect", **run)
        # a new colouring applies at once, in the browser, to what is already shown
        colour_by.change(None, colour_by, None, js=SET_COLOURING)
        sweep_button.click(handlers.sweep, [prompt, checkpoint], [sweep_plot, sweep_summary, gr.JSON(visible=False)],
                           api_name="memory_sweep", **run)
        scoring = score_button.click(handlers.surprisal, [prompt, checkpoint],
                                     [summary, surprisal_on, surprisal_off, surprisal_saved], api_name="surprisal",
                                     **run)
        for button, event, status in ((run_stop, generating, stats), (compare_stop, comparing, compare_stats),
                                      (score_stop, scoring, summary), (inspect_stop, inspecting, inspect_stats)):
            button.click(None, cancels=[event])
            event.then(stopped, status, status, queue=False, api_visibility="private")
        upload.upload(handlers.upload, upload, prompt, api_visibility="private")
        checkpoint.change(handlers.info, checkpoint, [info, mem_len], api_visibility="private")
        demo.load(handlers.info, checkpoint, [info, mem_len], api_visibility="private")
    demo.queue(default_concurrency_limit=concurrency,
               max_size=env_number("XLDEMO_QUEUE_SIZE", QUEUE_SIZE, int, least=1))
    return demo


def _asset(name: str) -> str:
    return (ASSETS / name).read_text()


def _slider(name: str, spec: Spec) -> gr.Slider:
    return gr.Slider(spec.minimum, spec.maximum, value=spec.value, step=spec.step, label=spec.label,
                     info=spec.info or None, elem_id=name)


def _html(value: str = "", **kwargs) -> gr.HTML:
    return gr.HTML(value, css_template=render.CSS, **kwargs)


def _controls(label: str, button_id: str, stop_id: str, status_id: str, hint: str):
    """The row each tab opens with: its run button and Stop, then a status line showing hint until a run."""
    with gr.Row():
        button = gr.Button(label, variant="primary", elem_id=button_id, min_width=100)
        stop = gr.Button("Stop", variant="stop", elem_id=stop_id, min_width=100)
    return button, stop, _html(render.message_line(hint), elem_id=status_id)


def _side_by_side(*views: tuple[str, str, str], follow: bool = True) -> list[gr.HTML]:
    """Text views in columns, each (title, text shown while empty, elem_id)."""
    out = []
    with gr.Row():
        for title, empty, elem_id in views:
            with gr.Column(min_width=260):
                gr.Markdown(f"**{title}**")
                out.append(_text_view(empty, elem_id, follow))
    return out


def _text_view(empty: str, elem_id: str, follow: bool = True, script: str = "", css: str = "") -> gr.HTML:
    """A scrolling box for segmented text, following its end as it grows if follow; shows `empty` until it
    has text. script and css: more of each, for this view alone."""
    scripts = (_asset("follow_end.js") if follow else "") + script
    return gr.HTML("", html_template=f'<div class="xl-view" data-empty="{render.escape(empty)}">${{value}}</div>',
                   css_template=render.CSS + css, js_on_load=scripts or None, elem_id=elem_id, container=True,
                   padding=True)
