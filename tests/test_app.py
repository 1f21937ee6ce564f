"""The app through gradio_client, launched in-process on 127.0.0.1 on a tiny random checkpoint: streaming with
segment labels, defaults, errors, cancellation and concurrent users, each checked against the engine alone."""

import os
import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a Hub repo id must fail fast here, not reach out
from gradio_client import Client
from gradio_client.exceptions import AppError

from test_render import labels, visible_text
from xldemo import ui
from xldemo.bench import free_port, served_app
from xldemo.checkpoint import build_model, load_checkpoint, save_checkpoint
from xldemo.engine import Finished, GenerationSettings, Token, WarmupProgress, generate

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"num_tokens": 256, "max_seq_len": 16, "max_mem_len": 32,
          "attn_layers": {"dim": 32, "depth": 2, "heads": 2, "rotary_pos_emb": True}}
PROMPT = "ALONSO, King of Naples\nSEBASTIAN, his Brother\nPROSPERO, the right Duke of Milan\n"  # 80 bytes


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(CONFIG)
    with torch.no_grad():
        model.to_logits.weight.mul_(4.0)  # a random model this sure of itself samples less uniform bytes
    return save_checkpoint(model, CONFIG, tmp_path_factory.mktemp("tiny-xl"))


@pytest.fixture(scope="module")
def url(folder):
    demo = ui.build_demo(str(folder), concurrency=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **ui.LAUNCH_OPTIONS)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(url) -> Client:
    return Client(url, verbose=False)


@pytest.fixture
def runs(monkeypatch):
    return watch_runs(monkeypatch)


def watch_runs(monkeypatch, seconds_per_step: float = 0.0) -> dict:
    """Watches the app's engine runs: how many are live at once, and how each ended ("finished", or "closed"
    before its end). seconds_per_step slows each token and each warm-up segment to a big model's pace."""
    record = {"live": 0, "most_live": 0, "ended": [], "lock": threading.Lock()}

    def watched(*args, **kwargs):
        events = generate(*args, **kwargs)

        def run():
            with record["lock"]:
                record["live"] += 1
                record["most_live"] = max(record["most_live"], record["live"])
            how = "closed"
            try:
                for event in events:
                    if isinstance(event, Finished):
                        how = "finished"
                    elif isinstance(event, (Token, WarmupProgress)):
                        time.sleep(seconds_per_step)
                    yield event
            finally:
                events.close()
                with record["lock"]:
                    record["live"] -= 1
                    record["ended"].append(how)
        return run()

    monkeypatch.setattr(ui, "generate", watched)
    return record


def engine_text(folder, prompt: str, **settings) -> str:
    """What the engine writes on its own, with a checkpoint loaded apart from the app's; settings not given are
    the app's defaults."""
    checkpoint = load_checkpoint(folder)
    settings = {**{name: spec.value for name, spec in ui.SAMPLING.items()}, **settings}
    *_, finished = generate(checkpoint, checkpoint.tokenizer.encode(prompt), GenerationSettings(**settings))
    return finished.texts[0]


def generated_text(html: str) -> str:
    return visible_text("".join(re.findall(r'<span class="xl-generated[^"]*">[^<]*</span>', html)))


def test_the_stream_arrives_in_growing_updates_with_segment_labels(client, folder):
    settings = dict(max_new_tokens=60, temperature=0.9, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.1,
                    seed=5, mem_len=24)
    updates = list(client.submit(PROMPT, api_name="/generate", **settings))
    assert len(updates) >= 3  # the first token, each new segment, the end
    for before, after in zip(updates, updates[1:]):
        assert after[0].startswith(before[0])  # the text only grows at its end
    html, stats = updates[-1]
    last_position = len(PROMPT.encode()) + 60 - 1
    assert labels(html) == list(range(last_position // CONFIG["max_seq_len"] + 1))
    assert visible_text(html) == PROMPT + generated_text(html)
    assert generated_text(html) == engine_text(folder, PROMPT, **settings)
    assert "segments" in stats and "tokens/s" in stats and "memory warm-up" in stats and "to first token" in stats
    assert "<b>24</b> tokens in memory per layer" in stats and "<b>5</b> seed" in stats


def test_memory_warm_up_over_a_long_prompt_shows_progress(client, monkeypatch):
    watch_runs(monkeypatch, seconds_per_step=0.01)
    prompt = PROMPT * 25  # 125 segments
    updates = list(client.submit(prompt, api_name="/generate", max_new_tokens=2, seed=1))
    html = updates[0][0]
    assert visible_text(html) == prompt and labels(html) == list(range(125))  # the prompt shows at once
    progress = [stats for _, stats in updates if "warming up memory" in stats]
    assert len(progress) >= 3 and 'role="progressbar"' in progress[0]
    done = [int(re.search(r"<b>(\d+)</b> of <b>124</b>", stats).group(1)) for stats in progress]
    assert done == sorted(done) and done[-1] > done[0]
    assert "warm-up" in updates[-1][1]


def test_defaults_apply_to_every_input_but_the_prompt(client, folder):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]
    assert api["parameters"][0]["parameter_name"] == "prompt"
    assert all(p["parameter_has_default"] for p in api["parameters"][1:])
    updates = list(client.submit(PROMPT, api_name="/generate"))
    html, stats = updates[-1]
    assert len(updates) < 100  # 400 tokens: updates are throttled, not one per token
    seed = int(re.search(r"<b>(\d+)</b> seed", stats).group(1))  # the default -1 draws one and reports it
    assert f"<b>{ui.SAMPLING['max_new_tokens'].value}</b> new tokens" in stats
    assert generated_text(html) == engine_text(folder, PROMPT, seed=seed, mem_len=CONFIG["max_mem_len"])


@pytest.mark.parametrize("prompt, inputs, message", [
    ("", {}, "prompt is empty"),
    (" \n\t ", {}, "prompt is empty"),
    ("x" * (ui.MAX_PROMPT_BYTES + 1), {}, "the limit is 262,144 bytes"),
    ("é" * (ui.MAX_PROMPT_BYTES // 2 + 1), {}, "the limit is 262,144 bytes"),  # the limit is in bytes
    (PROMPT, {"max_new_tokens": 0}, "Max new tokens"),
    (PROMPT, {"max_new_tokens": 10**6}, "Max new tokens"),
    (PROMPT, {"temperature": -1}, "Temperature"),
    (PROMPT, {"top_p": 0}, "Top-p"),
    (PROMPT, {"min_p": 1}, "Min-p"),
    (PROMPT, {"repetition_penalty": 0}, "Repetition penalty"),
    (PROMPT, {"top_k": 2.5}, "Top-k"),
    (PROMPT, {"seed": -2}, "Seed"),
    (PROMPT, {"mem_len": CONFIG["max_mem_len"] + 1}, "Memory length"),
    (PROMPT, {"stop": "\n".join("abcdefghij")}, "stop strings"),
    (PROMPT, {"stop": "x" * 65}, "at most 64 characters"),
    (PROMPT, {"checkpoint": "/etc"}, "Unknown checkpoint"),
    (PROMPT, {"checkpoint": "../../secrets"}, "Unknown checkpoint"),
    (PROMPT, {"checkpoint": "nobody/no-such-xl"}, "the Hugging Face Hub cannot provide it"),
], ids=lambda value: value if isinstance(value, str) and len(value) < 40 else None)
def test_bad_inputs_get_a_clear_error_and_the_server_keeps_serving(client, prompt, inputs, message):
    with pytest.raises(AppError, match=re.escape(message)):
        client.submit(prompt, api_name="/generate", **inputs).result(timeout=60)
    _, stats = client.submit("ab", api_name="/generate", max_new_tokens=3, seed=1).result(timeout=60)
    assert "<b>3</b> new tokens" in stats


def test_stop_strings_end_the_run(client, folder):
    free = engine_text(folder, PROMPT, max_new_tokens=80, seed=3, temperature=1.0, top_p=1.0)
    stop = free[10:12]
    if "\\" in stop or "\n" in stop:
        pytest.skip("a stop string that needs escaping")
    html, stats = client.submit(PROMPT, api_name="/generate", max_new_tokens=80, seed=3, stop=stop,
                                temperature=1.0, top_p=1.0).result(timeout=60)
    assert generated_text(html) == engine_text(folder, PROMPT, max_new_tokens=80, seed=3, temperature=1.0,
                                               top_p=1.0, stop=(stop,))
    assert stop in generated_text(html) and "<b>stop string</b> found" in stats


def test_cancelling_stops_the_engine_and_frees_the_slot(client, runs):
    jobs = [client.submit(PROMPT, api_name="/generate", max_new_tokens=4096, seed=i) for i in range(2)]
    for job in jobs:
        next(iter(job))  # streaming has begun
    for job in jobs:
        job.cancel()
    deadline = time.monotonic() + 20
    while len(runs["ended"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runs["ended"] == ["closed", "closed"]  # closed mid-run: the computation stopped, not just the display
    assert runs["live"] == 0
    # both slots of the queue are free again: a new request runs at once
    html, _ = client.submit("ab", api_name="/generate", max_new_tokens=5, seed=1).result(timeout=30)
    assert labels(html)


def test_concurrent_clients_get_independent_results_equal_to_the_engine_alone(url, folder, runs):
    requests = [(PROMPT, dict(max_new_tokens=300, seed=11, temperature=1.0, mem_len=32)),
                (PROMPT[::-1], dict(max_new_tokens=300, seed=12, temperature=0.7, mem_len=8))]
    results = [None, None]

    def user(i):
        prompt, settings = requests[i]
        results[i] = Client(url, verbose=False).submit(prompt, api_name="/generate", **settings).result(timeout=120)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs["most_live"] == 2  # they really ran at the same time
    for (prompt, settings), (html, stats) in zip(requests, results):
        assert generated_text(html) == engine_text(folder, prompt, **settings)
        assert visible_text(html).startswith(prompt)
        assert f"<b>{settings['seed']}</b> seed" in stats


def test_memory_on_vs_off_runs_one_seed_with_and_without_memory(client, folder):
    on, off, stats = client.submit(PROMPT, api_name="/compare", max_new_tokens=40, seed=9).result(timeout=60)
    assert generated_text(on) == engine_text(folder, PROMPT, max_new_tokens=40, seed=9, mem_len=32)
    assert generated_text(off) == engine_text(folder, PROMPT, max_new_tokens=40, seed=9, mem_len=0)
    assert labels(on) == labels(off) and len(labels(on)) >= 6
    assert "same seed 9" in stats


def test_surprisal_colours_the_prompt_with_memory_and_without(client):
    summary, on, off, saved = client.submit(PROMPT, api_name="/surprisal").result(timeout=60)
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
    assert ui.read_upload(str(good)) == "To be, or not to be"
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (ui.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(Exception, match="limit"):
        ui.read_upload(str(big))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(Exception, match="not UTF-8"):
        ui.read_upload(str(binary))


def test_only_shipped_checkpoints_the_default_and_hub_ids_are_accepted(folder):
    default = str(folder)
    assert ui.checkpoint_source(default, default) == default
    assert ui.checkpoint_source("someone/some-xl", default) == "someone/some-xl"
    shipped = ui.DEFAULT_CHECKPOINT.name  # named by its folder, present or not
    assert ui.checkpoint_source(shipped, shipped) == str(ui.DEFAULT_CHECKPOINT)
    for name in ("/etc", "tests", "../x/y", "", None, 3):
        with pytest.raises(Exception, match="checkpoint"):
            ui.checkpoint_source(name, default)


def test_app_py_is_thin_and_serves_on_the_port_it_is_given(folder):
    source = (ROOT / "app.py").read_text()
    assert "torch" not in source and "demo.launch(" in source and 'if __name__ == "__main__":' in source
    assert "import torch" not in Path(ui.__file__).read_text()
    with served_app(folder) as url:
        page = urllib.request.urlopen(url, timeout=5).read().decode()
    assert "xldemo" in page
