"""The app's event handlers: generators that yield the growing outputs, with every engine or input error turned
into a gr.Error in one place."""

import functools
import inspect
import time
from dataclasses import dataclass, replace

import gradio as gr

from ..engine import GenerationSettings
from ..checkpoint import Checkpoint
from ..errors import XLDemoError
from ..serving import scheduler_for
from ..surprisal import surprisal_bits
from ..sweep import DEFAULT_MEM_LENS, memory_sweep
from . import render
from .inputs import DEFAULTS, INPUTS, SURPRISAL_BYTES, check_prompt, read_upload, settings_from_inputs
from .plots import sweep_chips, sweep_figure, sweep_note
from .sources import cached_checkpoint, checkpoint_source, model_chips
from .view import TRAFFIC, Run, Throttle, Traffic, compare_status, surprisal_views, token_unit


class UserError(gr.Error):
    """A bad input, told to the user: not a server fault, so no traceback in the log."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)


def told_to_the_user(handler):
    """handler with XLDemoError (a bad input, or a checkpoint the engine refuses) shown as a UserError."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except XLDemoError as e:
                raise UserError(str(e)) from None
        return streaming

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except XLDemoError as e:
            raise UserError(str(e)) from None
    return plain


def of_inputs(handler, names: list[str] = INPUTS):
    """handler(inputs: dict), exposed to gradio as a function of names in order, each but the prompt defaulted:
    gradio reads the API's parameter names and defaults from this signature."""
    @functools.wraps(handler)
    def call(*values):
        yield from handler(dict(zip(names, values)))

    call.__signature__ = inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=DEFAULTS.get(name, inspect.Parameter.empty)) for name in names])
    del call.__wrapped__  # else inspect.signature would follow it back to handler's
    return call


@dataclass(frozen=True)
class Handlers:
    default_checkpoint: str
    time_limit_s: float = 300.0  # a run's longest, so that no visitor holds a row of the batch for ever
    processes: int = 0  # processes decoding the shared batches, each its own (see worker.py); 0: this one
    traffic: Traffic = TRAFFIC  # the server's streams, which share its updates (view.UPDATES_PER_S)

    def load(self, name) -> Checkpoint:
        return cached_checkpoint(checkpoint_source(name or self.default_checkpoint, self.default_checkpoint))

    def prepare(self, inputs: dict) -> tuple[Checkpoint, list[int], GenerationSettings]:
        prompt = check_prompt(inputs["prompt"])
        model = self.load(inputs["checkpoint"])
        return model, model.tokenizer.encode(prompt), settings_from_inputs(inputs)

    @told_to_the_user
    def generate(self, inputs: dict):
        """Streams (text HTML, stats HTML) as the model writes."""
        yield from self._stream(inputs, lambda run: (run.view.html(), run.status()))

    @told_to_the_user
    def generate_data(self, inputs: dict):
        """Streams the run as data (Run.data): text, token ids, log-probabilities, segments, timings, reason."""
        yield from self._stream(inputs, Run.data)

    @told_to_the_user
    def inspect(self, inputs: dict):
        """Streams (memory view HTML, stats HTML): the run with per-token details, coloured by inputs["colour_by"]."""
        yield from self._stream({**inputs, "details": True}, lambda run: (run.view.html(), run.status()),
                                inputs["colour_by"])

    def _stream(self, inputs: dict, show, colouring: str = DEFAULTS["colour_by"]):
        """show(run) after each event worth an update, as often as the throttle lets through."""
        model, ids, settings = self.prepare(inputs)
        run, began = None, time.monotonic()
        # one of the server's streams, sharing its updates, until the run ends
        with Throttle(traffic=self.traffic) as throttle:
            try:
                run = Run(model, ids, settings, colouring=colouring, processes=self.processes)
                while event := run.step():
                    self._within_time(began)
                    if throttle.due(force=run.due_now(event)):
                        run.new_segment = False
                        yield show(run)
                        throttle.resumed()
            finally:
                if run is not None:
                    run.close()

    def _within_time(self, began: float) -> None:
        if time.monotonic() - began > self.time_limit_s:
            raise XLDemoError(f"The run reached this server's time limit of {self.time_limit_s:g} s and was stopped.")

    @told_to_the_user
    def compare(self, inputs: dict):
        """Streams (memory-on HTML, memory-off HTML, stats HTML): two runs with one seed, token by token; a
        memory length of 0 compares the checkpoint's own with none."""
        model, ids, on = self.prepare({**inputs, "mem_len": inputs["mem_len"] or None})
        on = replace(on, mem_len=model.max_mem_len if on.mem_len is None else on.mem_len)
        off = replace(on, mem_len=0)
        runs, began = [], time.monotonic()
        with Throttle(traffic=self.traffic) as throttle:  # two runs, one stream of updates
            try:
                runs += [Run(model, ids, on, live_rate=False, processes=self.processes),
                         Run(model, ids, off, live_rate=False, processes=self.processes)]
                alive = [True, True]
                while any(alive):
                    self._within_time(began)
                    events = [run.step() if alive[i] else None for i, run in enumerate(runs)]
                    alive = [event is not None for event in events]
                    if throttle.due(force=any(run.due_now(e) for run, e in zip(runs, events) if e)
                                    or not any(alive)):
                        for run in runs:
                            run.new_segment = False
                        yield runs[0].view.html(), runs[1].view.html(), compare_status(*runs, on)
                        throttle.resumed()
            finally:
                for run in runs:
                    run.close()

    @told_to_the_user
    def surprisal(self, prompt, checkpoint=None):
        """Streams (summary HTML, memory-on HTML, memory-off HTML, bits-saved HTML): the prompt's tokens coloured
        by the bits the model spends on them, with memory and without, and by the difference."""
        prompt = check_prompt(prompt)
        model = self.load(checkpoint)
        all_ids = model.tokenizer.encode(prompt)
        ids = all_ids[:SURPRISAL_BYTES]
        unit = token_unit(model)
        if len(ids) < 2:
            raise XLDemoError(f"The prompt needs at least two {unit}s to score.")
        yield render.live_line([], f"scoring {len(ids):,} {unit}s with memory…"), "", "", ""
        bits_on = surprisal_bits(model, ids, memory=True)
        yield render.live_line([], f"scoring {len(ids):,} {unit}s without memory…"), "", "", ""
        bits_off = surprisal_bits(model, ids, memory=False)
        yield surprisal_views(model, ids, bits_on, bits_off, len(all_ids))

    @told_to_the_user
    def sweep(self, prompt, checkpoint=None):
        """(plot, summary HTML, data): bits per token of the prompt's first SURPRISAL_BYTES for memory lengths from
        none to beyond the trained length."""
        prompt = check_prompt(prompt)
        model = self.load(checkpoint)
        all_ids = model.tokenizer.encode(prompt)
        result = memory_sweep(model.model, all_ids[:SURPRISAL_BYTES], DEFAULT_MEM_LENS)
        return sweep_figure(result), render.stats_line(sweep_chips(result), sweep_note(result, len(all_ids))), result

    def info(self, checkpoint):
        """(model info HTML, memory slider update) for the chosen checkpoint; a bad choice is told in the info
        line, not as an error, since it fires as the user types."""
        try:
            model = self.start_decoding(checkpoint)
        except XLDemoError as e:
            return render.message_line(str(e)), gr.update()
        return render.stats_line(model_chips(model)), gr.update(maximum=model.max_mem_len, value=model.max_mem_len)

    def start_decoding(self, checkpoint=None) -> Checkpoint:
        """The checkpoint (default: the default one), its decoding processes started where batches run apart: now,
        while the visitor reads the page or before the server takes visitors, not at the first run."""
        model = self.load(checkpoint)
        if self.processes:
            scheduler_for(model, self.processes)
        return model

    @staticmethod
    @told_to_the_user
    def upload(path):
        """The text of an uploaded .txt file, for the prompt box."""
        return read_upload(path) if path else gr.update()


def stopped(status: str) -> str:
    """After a run ends, however it ends: a status line still live means it was stopped."""
    return render.message_line("Stopped.") if render.is_live(status) else gr.skip()
