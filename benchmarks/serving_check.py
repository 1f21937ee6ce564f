"""Many visitors at once through `python app.py`: in each round, each of 8 visitors' runs alone, then all 8 at once;
aggregate throughput against one visitor's, over the rounds and in each, and every result against its solo run.
Rounds interleave both sides, since this machine's speed drifts within a minute. python -m benchmarks.serving_check
[--visitors 8] [--new-tokens 300] [--rounds 3] [--checkpoint DIR]"""

import argparse
import os
import threading
import time

from gradio_client import Client

from xldemo.checkpoint import DEFAULT_CHECKPOINT
from xldemo.examples import load_examples
from xldemo.web.local import served_app


def visitor_requests(count: int, new_tokens: int) -> list[dict]:
    """The app's examples in turn, each visitor with its own seed and sampling settings."""
    examples = list(load_examples().values())
    return [dict(prompt=examples[i % len(examples)], max_new_tokens=new_tokens, seed=i + 1,
                 temperature=(0.7, 0.8, 0.9, 1.0)[i % 4], top_p=(0.95, 1.0)[i % 2]) for i in range(count)]


def run(client: Client, request: dict) -> tuple[list[int], float]:
    """(generated token ids, seconds from the request to its end)."""
    began = time.perf_counter()
    data = client.submit(request["prompt"], **{k: v for k, v in request.items() if k != "prompt"},
                         api_name="/generate_data").result(timeout=600)
    return data["token_ids"], time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visitors", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    args = parser.parse_args()
    requests = visitor_requests(args.visitors, args.new_tokens)
    with served_app(args.checkpoint) as url:
        # no TLS on loopback, so no certificates to load: with ssl_verify on, gradio_client builds an SSL context
        # (32 ms of this process's CPU, from the CA file) for each of a request's HTTP clients, and 8 visitors' threads
        # took turns at that for 160-440 ms before the last reached the server, where one alone got there in 35 ms
        clients = [Client(url, verbose=False, analytics_enabled=False, ssl_verify=False) for _ in requests]
        for client, request in zip(clients, requests):  # loads the checkpoint, and warms the prefix cache for both
            run(client, {**request, "max_new_tokens": 1})
        rounds = [one_round(clients, requests) for _ in range(args.rounds)]
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine: other work may run beside this)")
    print(f"{args.checkpoint}: {len(requests)} visitors, {args.new_tokens} new tokens each, through `python app.py`, "
          f"{args.rounds} rounds of both")
    for i, (alone, together, wall) in enumerate(rounds, 1):
        solo_rate, rate = rate_of(alone), sum(len(ids) for ids, _ in together) / wall
        print(f"round {i}: one visitor at a time {solo_rate:.0f} tokens/s (request to end), {len(requests)} at once "
              f"{rate:.0f} tokens/s aggregate in {wall:.1f} s (per visitor {min(len(ids) / s for ids, s in together):.0f}"
              f" to {max(len(ids) / s for ids, s in together):.0f}): {rate / solo_rate:.2f}x")
    solo_rate = rate_of([one for alone, _, _ in rounds for one in alone])
    rate = sum(len(ids) for _, together, _ in rounds for ids, _ in together) / sum(wall for _, _, wall in rounds)
    print(f"all rounds: one visitor {solo_rate:.0f} tokens/s, {len(requests)} at once {rate:.0f} tokens/s: "
          f"aggregate / one visitor {rate / solo_rate:.2f}x")
    same = [a[0] == t[0] for alone, together, _ in rounds for a, t in zip(alone, together)]
    print(f"results identical to their solo runs: {sum(same)} of {len(same)}")


def rate_of(runs: list[tuple[list[int], float]]) -> float:
    return sum(len(ids) for ids, _ in runs) / sum(seconds for _, seconds in runs)


def one_round(clients: list[Client], requests: list[dict]) -> tuple[list, list, float]:
    """(each run alone, the runs all at once, the seconds from the first start to the last end)."""
    alone = [run(client, request) for client, request in zip(clients, requests)]
    together: list = [None] * len(requests)

    def visit(i: int) -> None:
        together[i] = run(clients[i], requests[i])

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(len(requests))]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return alone, together, time.perf_counter() - began


if __name__ == "__main__":
    main()
