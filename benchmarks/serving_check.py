"""Many visitors at once through `python app.py`: each of 8 visitors' runs alone, then all 8 at once; aggregate
throughput against one visitor's, and every result against its solo run. python -m benchmarks.serving_check
[--visitors 8] [--new-tokens 300] [--checkpoint DIR]"""

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
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    args = parser.parse_args()
    requests = visitor_requests(args.visitors, args.new_tokens)
    with served_app(args.checkpoint) as url:
        clients = [Client(url, verbose=False, analytics_enabled=False) for _ in requests]
        for client, request in zip(clients, requests):  # loads the checkpoint, and warms the prefix cache for both
            run(client, {**request, "max_new_tokens": 1})
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
        wall = time.perf_counter() - began
    tokens = sum(len(ids) for ids, _ in together)
    solo_rate = sum(len(ids) for ids, _ in alone) / sum(seconds for _, seconds in alone)
    same = [a[0] == t[0] for a, t in zip(alone, together)]
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine: other work may run beside this)")
    print(f"{args.checkpoint}: {len(requests)} visitors, {args.new_tokens} new tokens each, through `python app.py`")
    print(f"one visitor at a time: {solo_rate:.0f} tokens/s (request to end, {len(requests)} runs)")
    print(f"{len(requests)} visitors at once: {tokens / wall:.0f} tokens/s aggregate in {wall:.1f} s, per visitor "
          f"{min(len(ids) / s for ids, s in together):.0f} to {max(len(ids) / s for ids, s in together):.0f} tokens/s")
    print(f"aggregate / one visitor: {tokens / wall / solo_rate:.2f}x")
    print(f"results identical to their solo runs: {sum(same)} of {len(same)}")


if __name__ == "__main__":
    main()
