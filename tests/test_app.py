"""The app through gradio_client, launched in-process on 127.0.0.1 on a tiny random checkpoint: streaming with
segment labels, defaults, errors, cancellation and concurrent users, each checked against the engine alone."""

import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from conftest import APP_CONFIG, generated_text, labels, visible_text, watch_runs
from xldemo.checkpoint import load_checkpoint
from xldemo.engine import GenerationSettings, generate
from xldemo.errors import XLDemoError
from xldemo.sweep import memory_sweep
from xldemo.web import view
from xldemo.web.handlers import Handlers, UserError
from xldemo.web.inputs import DEFAULTS, MAX_PROMPT_BYTES, SAMPLING, escape_stop
from xldemo.web.local import ROOT, served_app

PROMPT = "ALONSO, King of Naples\nSEBASTIAN, his Brother\nPROSPERO, the right Duke of Milan\n"  # 80 bytes


def engine_text(folder, prompt: str, **settings) -> str:
    """What the engine writes on its own, with a checkpoint loaded apart from the app's; settings not given are
    the app's defaults."""
    checkpoint = load_checkpoint(folder)
    settings = {**{name: DEFAULTS[name] for name in SAMPLING}, **settings}
    *_, finished = generate(checkpoint, checkpoint.tokenizer.encode(prompt), GenerationSettings(**settings))
    return finished.texts[0]


def test_the_stream_arrives_in_growing_updates_with_segment_labels(app_client, app_folder):
    settings = dict(max_new_tokens=60, temperature=0.9, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.1,
                    seed=5, mem_len=24)
    updates = list(app_client.submit(PROMPT, api_name="/generate", **settings))
    assert len(updates) >= 3  # the first token, each new segment, the end
    for before, after in zip(updates, updates[1:]):
        assert after[0].startswith(before[0])  # the text only grows at its end
    html, stats = updates[-1]
    last_position = len(PROMPT.encode()) + 60 - 1
    assert labels(html) == list(range(last_position // APP_CONFIG["max_seq_len"] + 1))
    assert visible_text(html) == PROMPT + generated_text(html)
    assert generated_text(html) == engine_text(app_folder, PROMPT, **settings)
    assert "segments" in stats and "tokens/s" in stats and "memory warm-up" in stats and "to first token" in stats
    assert "<b>24</b> tokens in memory per layer" in stats and "<b>5</b> seed" in stats


def test_memory_warm_up_over_a_long_prompt_shows_progress(app_client, monkeypatch):
    watch_runs(monkeypatch, seconds_per_step=0.01)
    prompt = PROMPT * 25  # 125 segments
    updates = list(app_client.submit(prompt, api_name="/generate", max_new_tokens=2, seed=1))
    html = updates[0][0]
    assert visible_text(html) == prompt and labels(html) == list(range(125))  # the prompt shows at once
    progress = [stats for _, stats in updates if "warming up memory" in stats]
    assert len(progress) >= 3 and 'role="progressbar"' in progress[0]
    done = [int(re.search(r"<b>(\d+)</b> of <b>124</b>", stats).group(1)) for stats in progress]
    assert done == sorted(done) and done[-1] > done[0]
    assert "warm-up" in updates[-1][1]


def test_defaults_apply_to_every_input_but_the_prompt(app_client, app_folder):
    api = app_client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]
    assert api["parameters"][0]["parameter_name"] == "prompt"
    assert all(p["parameter_has_default"] for p in api["parameters"][1:])
    updates = list(app_client.submit(PROMPT, api_name="/generate"))
    html, stats = updates[-1]
    assert len(updates) < 100  # 400 tokens: updates are throttled, not one per token
    seed = int(re.search(r"<b>(\d+)</b> seed", stats).group(1))  # the default -1 draws one and reports it
    assert f"<b>{SAMPLING['max_new_tokens'].value}</b> new tokens" in stats
    assert generated_text(html) == engine_text(app_folder, PROMPT, seed=seed, mem_len=APP_CONFIG["max_mem_len"])


@pytest.mark.parametrize("prompt, inputs, message", [
    ("", {}, "prompt is empty"),
    (" \n\t ", {}, "prompt is empty"),
    ("x" * (MAX_PROMPT_BYTES + 1), {}, "the limit is 262,144 bytes"),
    ("é" * (MAX_PROMPT_BYTES // 2 + 1), {}, "the limit is 262,144 bytes"),  # the limit is in bytes
    # gradio's own range checks, from each control's declared range
    (PROMPT, {"max_new_tokens": 0}, "less than minimum value 1"),
    (PROMPT, {"max_new_tokens": 10**6}, "greater than maximum value 4096"),
    (PROMPT, {"temperature": -1}, "less than minimum value 0"),
    (PROMPT, {"top_p": 0}, "less than minimum value 0.01"),
    (PROMPT, {"min_p": 1}, "greater than maximum value 0.99"),
    (PROMPT, {"repetition_penalty": 0}, "less than minimum value 0.5"),
    (PROMPT, {"seed": -2}, "less than minimum value -1"),
    (PROMPT, {"mem_len": APP_CONFIG["max_mem_len"] + 1}, "greater than maximum value 32"),
    # GenerationSettings, the one validator of what the ranges let through
    (PROMPT, {"top_k": 2.5}, "top_k must be an integer >= 0, got 2.5"),
    # the app's own limits
    (PROMPT, {"seed": 2.5}, "The seed must be a whole number from -1 (draw one) to 9007199254740991, got 2.5."),
    (PROMPT, {"stop": "\n".join("abcdefghij")}, "stop strings"),
    (PROMPT, {"stop": "x" * 65}, "at most 64 characters"),
    (PROMPT, {"checkpoint": "/etc"}, "Unknown checkpoint"),
    (PROMPT, {"checkpoint": "../../secrets"}, "Unknown checkpoint"),
    (PROMPT, {"checkpoint": "nobody/no-such-xl"}, "does not load 'nobody/no-such-xl' from the Hugging Face Hub"),
], ids=lambda value: value if isinstance(value, str) and len(value) < 40 else None)
def test_bad_inputs_get_a_clear_error_and_the_server_keeps_serving(app_client, prompt, inputs, message):
    with pytest.raises(AppError, match=re.escape(message)):
        app_client.submit(prompt, api_name="/generate", **inputs).result(timeout=60)
    _, stats = app_client.submit("ab", api_name="/generate", max_new_tokens=3, seed=1).result(timeout=60)
    assert "<b>3</b> new tokens" in stats


def test_stop_strings_end_the_run(app_client, app_folder):
    free = engine_text(app_folder, PROMPT, max_new_tokens=80, seed=3, temperature=1.0, top_p=1.0)
    stop = free[10:12]  # whatever the two characters are: the stop box's escapes carry newlines and backslashes
    html, stats = app_client.submit(PROMPT, api_name="/generate", max_new_tokens=80, seed=3, stop=escape_stop(stop),
                                    temperature=1.0, top_p=1.0).result(timeout=60)
    assert generated_text(html) == engine_text(app_folder, PROMPT, max_new_tokens=80, seed=3, temperature=1.0,
                                               top_p=1.0, stop=(stop,))
    assert generated_text(html).endswith(stop) and len(generated_text(html)) < len(free)
    assert "<b>stop string</b> found" in stats


def test_cancelling_stops_the_engine_and_frees_the_slot(app_client, runs):
    jobs = [app_client.submit(PROMPT, api_name="/generate", max_new_tokens=4096, seed=i) for i in range(2)]
    for job in jobs:
        next(iter(job))  # streaming has begun
    for job in jobs:
        job.cancel()
    deadline = time.monotonic() + 20
    while len(runs["ended"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runs["ended"] == ["closed", "closed"]  # closed mid-run: the computation stopped, not just the display
    assert runs["live"] == 0
    assert runs["most_streams"] == 2 and view.TRAFFIC.streams == 0  # and their share of the updates is given back
    # both slots of the queue are free again: a new request runs at once
    html, _ = app_client.submit("ab", api_name="/generate", max_new_tokens=5, seed=1).result(timeout=30)
    assert labels(html)


def test_concurrent_clients_get_independent_results_equal_to_the_engine_alone(app_url, app_folder, runs):
    requests = [(PROMPT, dict(max_new_tokens=300, seed=11, temperature=1.0, mem_len=32)),
                (PROMPT[::-1], dict(max_new_tokens=300, seed=12, temperature=0.7, mem_len=8))]
    results = [None, None]

    def user(i):
        prompt, settings = requests[i]
        client = Client(app_url, verbose=False, analytics_enabled=False)
        results[i] = client.submit(prompt, api_name="/generate", **settings).result(timeout=120)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs["most_live"] == 2  # they really ran at the same time
    assert runs["most_streams"] == 2 and view.TRAFFIC.streams == 0  # sharing the server's updates while they ran
    for (prompt, settings), (html, stats) in zip(requests, results):
        assert generated_text(html) == engine_text(app_folder, prompt, **settings)
        assert visible_text(html).startswith(prompt)
        assert f"<b>{settings['seed']}</b> seed" in stats


def test_memory_on_vs_off_runs_one_seed_with_and_without_memory(app_client, app_folder):
    on, off, stats = app_client.submit(PROMPT, api_name="/compare", max_new_tokens=40, seed=9).result(timeout=60)
    assert generated_text(on) == engine_text(app_folder, PROMPT, max_new_tokens=40, seed=9, mem_len=32)
    assert generated_text(off) == engine_text(app_folder, PROMPT, max_new_tokens=40, seed=9, mem_len=0)
    assert labels(on) == labels(off) and len(labels(on)) >= 6
    assert "same seed 9" in stats


def test_surprisal_colours_the_prompt_with_memory_and_without(app_client):
    summary, on, off, saved = app_client.submit(PROMPT, api_name="/surprisal").result(timeout=60)
    assert "bits/byte saved by memory" in summary and "saved after segment 0" in summary
    assert visible_text(on) == visible_text(off) == visible_text(saved) == PROMPT
    first_saved = re.split(r'data-segment="1"', saved)[0]
    assert set(re.findall(r'class="(xl-d\w+)"', first_saved)) <= {"xl-dna", "xl-d2"}  # nothing saved, nothing lost
    assert labels(on) == list(range(5))
    first = re.split(r'data-segment="1"', on)[0]
    assert first == re.split(r'data-segment="1"', off)[0]  # segment 0 has no memory either way
    assert on != off


def test_uploads_fill_the_prompt_box_within_the_limit(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("To be, or not to be", encoding="utf-8")
    assert Handlers.upload(str(good)) == "To be, or not to be"
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (MAX_PROMPT_BYTES + 1))
    with pytest.raises(UserError, match="limit is 262,144 bytes"):
        Handlers.upload(str(big))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8"):
        Handlers.upload(str(binary))


def test_app_py_builds_the_demo_on_import_and_serves_only_when_run(app_folder):
    source = (ROOT / "app.py").read_text()
    assert "torch" not in source and 'if __name__ == "__main__":' in source
    check = ("import app, gradio; "
             "assert isinstance(app.demo, gradio.Blocks) and not app.demo.is_running and app.demo.local_url is None; "
             "print('built, not serving')")
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XLDEMO_CHECKPOINT": str(app_folder)})
    assert done.returncode == 0 and "built, not serving" in done.stdout, done.stderr[-2000:]
    with served_app(app_folder) as url:
        # the default checkpoint's decoding process started with the server, before any page loaded
        assert decoding_processes(urllib.parse.urlparse(url).port)
        page = urllib.request.urlopen(url, timeout=5).read().decode()
    assert "xldemo" in page


@pytest.mark.parametrize("name, value, message", [
    ("XLDEMO_UPDATES_PER_S", "0", "XLDEMO_UPDATES_PER_S must be a number above 0, got '0'"),
    ("XLDEMO_UPDATES_PER_S", "fast", "XLDEMO_UPDATES_PER_S must be a number, got 'fast'"),
    ("XLDEMO_TIME_LIMIT", "nan", "XLDEMO_TIME_LIMIT must be a number >= 0, got 'nan'"),
    ("XLDEMO_DECODE_PROCESSES", "1.5", "XLDEMO_DECODE_PROCESSES must be a whole number, got '1.5'"),
    ("XLDEMO_DECODE_PROCESSES", "100000", f"XLDEMO_DECODE_PROCESSES must be a whole number <= {os.cpu_count()} (this "
                                          "machine's cores), got '100000'"),
    ("XLDEMO_CONCURRENCY", "0", "XLDEMO_CONCURRENCY must be a whole number >= 1, got '0'"),
    ("XLDEMO_QUEUE_SIZE", "-3", "XLDEMO_QUEUE_SIZE must be a whole number >= 1, got '-3'"),
    ("XLDEMO_MAX_PARAMETERS", "1e9", "XLDEMO_MAX_PARAMETERS must be a whole number, got '1e9'"),
    ("XLDEMO_MAX_DOWNLOAD_MB", "0", "XLDEMO_MAX_DOWNLOAD_MB must be a whole number >= 1, got '0'")])
def test_an_operators_setting_the_server_cannot_use_is_refused_in_one_line(monkeypatch, app_folder, name, value,
                                                                          message):
    from xldemo.web.layout import build_demo

    monkeypatch.setenv(name, value)
    with pytest.raises(XLDemoError) as refused:
        build_demo(str(app_folder))
    assert str(refused.value) == message


def test_app_py_says_a_bad_setting_in_one_line_and_exits_2(app_folder):
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XLDEMO_CHECKPOINT": str(app_folder), "XLDEMO_UPDATES_PER_S": "fast"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: XLDEMO_UPDATES_PER_S must be a number, got 'fast'"


def decoding_processes(port: int) -> list[int]:
    """The pids of the decoding processes (python -m xldemo.worker) of the app served on port."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or b"xldemo.worker" not in (proc / "cmdline").read_bytes().split(b"\0"):
                continue
            parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]  # after the name: state, then ppid
            if f"GRADIO_SERVER_PORT={port}".encode() in Path(f"/proc/{parent}/environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # a process that ended meanwhile
            continue
    return found


def test_importing_xldemo_changes_no_process_state():
    """Every module of the package imported after its dependencies: the environment and torch's thread count
    stay as they were."""
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "xldemo").rglob("*.py")
                     if p.name != "__main__.py")
    check = ("import importlib, os, sys, torch, x_transformers, gradio, huggingface_hub, safetensors\n"
             "env, threads = dict(os.environ), torch.get_num_threads()\n"
             f"for name in {modules!r}: importlib.import_module(name)\n"
             "changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k))\n"
             "assert not changed and torch.get_num_threads() == threads, (changed, torch.get_num_threads())\n"
             "print(len(sys.modules))")
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(modules) > 20


def test_the_data_endpoint_streams_the_run_as_json_equal_to_the_engine(app_client, app_folder):
    settings = dict(max_new_tokens=50, temperature=0.9, seed=21, mem_len=16)
    updates = list(app_client.submit(PROMPT, api_name="/generate_data", **settings))
    assert len(updates) >= 3 and updates[0]["reason"] is None  # the start, the first token, ..., the end
    for before, after in zip(updates, updates[1:]):
        assert after["token_ids"][:len(before["token_ids"])] == before["token_ids"]
    data = updates[-1]
    checkpoint = load_checkpoint(app_folder)
    ids = checkpoint.tokenizer.encode(PROMPT)
    events = list(generate(checkpoint, ids, GenerationSettings(**{**{n: DEFAULTS[n] for n in SAMPLING}, **settings})))
    tokens = [e for e in events if hasattr(e, "logprob")]
    assert data["token_ids"] == [t.id for t in tokens] and data["text"] == events[-1].texts[0]
    assert data["logprobs"] == pytest.approx([t.logprob for t in tokens], abs=1e-5)
    assert data["reason"] == "length" and data["seed"] == 21 and data["mem_len"] == 16
    assert data["prompt_tokens"] == 80 and [s["start"] for s in data["segments"]] == list(range(0, 130, 16))
    assert sum(s["generated_tokens"] for s in data["segments"]) == 50
    assert data["decode_tokens_per_s"] > 0 and data["warmup_s"] <= data["time_to_first_token_s"]
    with pytest.raises(AppError, match="greater than maximum value 4096"):
        app_client.submit(PROMPT, api_name="/generate_data", max_new_tokens=5000).result(timeout=60)


def test_the_memory_view_and_its_data_carry_the_engines_details(app_client, app_folder):
    settings = dict(max_new_tokens=30, temperature=0.9, seed=8, mem_len=32)
    html, stats = app_client.submit(PROMPT, api_name="/inspect", colour_by="attention on memory",
                                    **settings).result(timeout=60)
    assert 'data-colour="attention on memory"' in html and html.count('class="xl-t xl-generated') == 30
    assert "<b>30</b> new tokens" in stats
    data = app_client.submit(PROMPT, api_name="/generate_data", details=True, **settings).result(timeout=60)
    checkpoint = load_checkpoint(app_folder)
    full = {**{n: DEFAULTS[n] for n in SAMPLING}, **settings}
    tokens = [e for e in generate(checkpoint, checkpoint.tokenizer.encode(PROMPT),
                                  GenerationSettings(**full, details=True)) if hasattr(e, "details")]
    assert [t["id"] for t in data["tokens"]] == [t.id for t in tokens] == data["token_ids"]
    assert [t["attended"][0][0] for t in data["tokens"]] == [t.details.attended[0][0] for t in tokens]
    assert [t["rank"] for t in data["tokens"]] == [t.details.rank for t in tokens]
    assert "tokens" not in app_client.submit(PROMPT, api_name="/generate_data", max_new_tokens=3).result(timeout=60)
    with pytest.raises(AppError, match="not in the list of choices"):
        app_client.submit(PROMPT, api_name="/inspect", colour_by="mood").result(timeout=60)


def test_the_memory_sweep_scores_the_prompt_for_each_memory_length(app_client, app_folder):
    plot, summary, data = app_client.submit(PROMPT * 2, api_name="/memory_sweep").result(timeout=120)
    checkpoint = load_checkpoint(app_folder)
    expected = memory_sweep(checkpoint.model, checkpoint.tokenizer.encode(PROMPT * 2))
    assert [p["mem_len"] for p in data["points"]] == [0, 32, 64, 128, 256, 512, 1024]
    assert [p["bits_per_token"] for p in data["points"]] == pytest.approx(
        [p["bits_per_token"] for p in expected["points"]], abs=1e-6)
    assert data["trained_mem_len"] == 32 and "bits/token without memory" in summary and plot
