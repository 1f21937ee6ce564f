"""Training speed, fp32 against bf16 autocast, side by side on one batch shape, and whether bf16 holds up (the
loss of each step agrees). python -m benchmarks.train_speed [--config PATH] [--batch-size 8] [--segments 4]"""

import argparse
import time

import torch
from x_transformers import XLAutoregressiveWrapper

from xldemo.checkpoint import build_model, read_config
from xldemo.train import MODEL_CONFIGS, cpu_has_amx


def tokens_per_second(config: dict, bf16: bool, batch: torch.Tensor, steps: int, warmup: int = 2):
    """(tokens/s over steps after warmup, losses of every step), from the same initial weights and batch."""
    torch.manual_seed(0)
    wrapper = XLAutoregressiveWrapper(build_model(config))
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=1e-3)
    losses = []
    for step in range(warmup + steps):
        if step == warmup:
            began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = wrapper(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return batch[:, 1:].numel() * steps / (time.perf_counter() - began), losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(MODEL_CONFIGS / "shakespeare-xl.json"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    config = read_config(args.config)
    batch = torch.randint(0, config["num_tokens"], (args.batch_size, args.segments * config["max_seq_len"] + 1),
                          generator=torch.Generator().manual_seed(0))
    fp32, fp32_losses = tokens_per_second(config, False, batch, args.steps)
    bf16, bf16_losses = tokens_per_second(config, True, batch, args.steps)
    drift = max(abs(a - b) for a, b in zip(fp32_losses, bf16_losses))
    print(f"| | fp32 | bf16 autocast | ratio |\n|---|---:|---:|---:|\n"
          f"| training tokens/s | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.2f}x |\n\n"
          f"largest loss difference over {len(fp32_losses)} steps: {drift:.4f} nats; CPU has AMX: {cpu_has_amx()}; "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
