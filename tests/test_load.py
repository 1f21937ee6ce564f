"""A load test on loopback, bounded in count and time: 16 clients at once against the app served in this process,
some cancelling mid-stream, some sending bad inputs; good requests get their solo results, bad ones their errors,
nothing hangs, and the server's memory and batch rows return to where they were."""

import gc
import threading
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from conftest import generated_text
from test_app import PROMPT, engine_text
from xldemo import serving
from xldemo.bench import resident_bytes
from xldemo.web import sources

CLIENTS = 16
DEADLINE_S = 180  # the whole round; a client still running then has hung
RSS_TOLERANCE = 40 * 2**20


@pytest.fixture(scope="module")
def busy_app_url(app_folder):
    """The app as served with its default concurrency (a full batch), on a port of its own."""
    from xldemo.web.layout import DEFAULT_CONCURRENCY, build_demo, launch_options
    from xldemo.web.local import free_port

    demo = build_demo(str(app_folder), concurrency=DEFAULT_CONCURRENCY)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def plan() -> list[tuple[str, str, dict, str | None]]:
    """Per client: (role, prompt, inputs, expected error): good runs of different prompts, lengths, memory lengths
    and seeds; runs cancelled mid-stream; bad inputs."""
    good = [("good", PROMPT[i:] + PROMPT[:i], dict(max_new_tokens=30 + 9 * i, seed=i, mem_len=(32, 8, 0, 16)[i % 4],
                                                  temperature=(0.7, 1.0)[i % 2]), None) for i in range(10)]
    cancelled = [("cancel", PROMPT * (i + 1), dict(max_new_tokens=4096, seed=40 + i), None) for i in range(3)]
    bad = [("bad", "", {}, "prompt is empty"),
           ("bad", PROMPT, dict(max_new_tokens=0), "less than minimum value 1"),
           ("bad", PROMPT, dict(checkpoint="nobody/no-such-xl"), "does not load 'nobody/no-such-xl'")]
    return good + cancelled + bad


def visit(url: str, role: str, prompt: str, inputs: dict, results: dict, i: int) -> None:
    client = Client(url, verbose=False, analytics_enabled=False)
    job = client.submit(prompt, api_name="/generate", **inputs)
    try:
        if role == "cancel":
            for html, _ in job:
                if generated_text(html):
                    break
            job.cancel()
            results[i] = "cancelled"
        else:
            results[i] = job.result(timeout=DEADLINE_S)
    except AppError as e:
        results[i] = e


def rss(pool) -> int:
    """The server's resident memory: this process's and its decoding processes'."""
    gc.collect()
    return resident_bytes() + sum(resident_bytes(worker.process.pid) for worker in pool.workers)


def test_sixteen_clients_good_cancelling_and_bad_all_get_their_answer(busy_app_url, app_folder):
    from xldemo.web.layout import configured_handlers

    processes = configured_handlers(str(app_folder)).processes
    scheduler = serving.scheduler_for(sources.cached_checkpoint(str(app_folder)), processes)  # the app's
    clients, results = plan(), {}
    assert len(clients) == CLIENTS
    warm = [threading.Thread(target=visit, args=(busy_app_url, *clients[i][:3], {}, i)) for i in range(8)]
    for thread in warm:  # a round before measuring: the batch's buffers and gradio's own state at full size
        thread.start()
    for thread in warm:
        thread.join(DEADLINE_S)
    before = rss(scheduler)
    threads = [threading.Thread(target=visit, args=(busy_app_url, *client[:3], results, i), daemon=True)
               for i, client in enumerate(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, began + DEADLINE_S - time.monotonic()))
    assert not [i for i, t in enumerate(threads) if t.is_alive()], "clients still waiting: the server hung"
    for i, (role, prompt, inputs, error) in enumerate(clients):
        if role == "good":
            html, stats = results[i]
            assert generated_text(html) == engine_text(app_folder, prompt, **inputs), f"client {i}"
        elif role == "bad":
            assert isinstance(results[i], AppError) and error in str(results[i]), f"client {i}: {results[i]!r}"
        else:
            assert results[i] == "cancelled"
    deadline = time.monotonic() + 20  # gradio closes a cancelled run's generator soon after the client leaves
    while scheduler.live() != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scheduler.live() == (0, 0)  # every row freed, cancelled ones too
    assert rss(scheduler) - before < RSS_TOLERANCE, (rss(scheduler) - before) / 2**20


def test_a_full_queue_says_so_and_a_run_past_the_time_limit_is_stopped(app_folder, monkeypatch):
    from xldemo.web.layout import build_demo, launch_options
    from xldemo.web.local import free_port

    monkeypatch.setenv("XLDEMO_QUEUE_SIZE", "1")
    monkeypatch.setenv("XLDEMO_TIME_LIMIT", "0.5")
    demo = build_demo(str(app_folder), concurrency=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        running = client.submit(PROMPT, api_name="/generate", max_new_tokens=4096, seed=1)
        next(iter(running))  # it runs: the one place is taken
        waiting = client.submit(PROMPT, api_name="/generate", max_new_tokens=4096, seed=2)
        time.sleep(0.2)
        refused = client.submit(PROMPT, api_name="/generate", max_new_tokens=5, seed=3)
        outcomes = []
        for job in (running, waiting, refused):
            try:
                job.result(timeout=60)
                outcomes.append("finished")
            except Exception as e:  # gradio_client's own error types differ by case
                outcomes.append(str(e))
    finally:
        demo.close()
    assert "time limit of 0.5 s" in outcomes[0] and "time limit of 0.5 s" in outcomes[1]
    assert "Queue is full" in outcomes[2]
