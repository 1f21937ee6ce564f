"""Training: the loss falls, resuming is exact, the learning-rate schedule, and the shipped checkpoint."""

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from x_transformers import Decoder, TransformerWrapper, XLAutoregressiveWrapper

from conftest import tiny_config
from xldemo import XLDemoError, build_model, load_checkpoint, save_checkpoint
from xldemo.checkpoint import CONFIG_FILE, DEFAULT_CHECKPOINT, WEIGHTS_FILE
from xldemo.data import DEFAULT_CACHE, SEPARATOR, load_split, prepare, train_plays, training_text
from xldemo.rename import CastSampler, generic_words, name_words
from xldemo.speakers import speaker_names
from xldemo.teacher import bits_per_token
from xldemo.train import (MODEL_CONFIGS, HeadingWeightedLoss, TrainSettings, heading_weights, learning_rate,
                          sample_batch, train, training_corpus, with_cast_samples)

TINY = tiny_config(seq_len=32, mem_len=32)


def settings(folder, **changes) -> TrainSettings:
    config = folder / "tiny.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(TINY))
    return replace(TrainSettings(model_config=str(config), out=str(folder / "run"), data=str(DEFAULT_CACHE),
                                 batch_size=4, segments=2, lr=3e-3, warmup_steps=5, eval_every=1000,
                                 eval_bytes=1024, speaker_prompts=0), **changes)


def saved_tiny(folder, seed=1, config=TINY):
    torch.manual_seed(seed)
    return save_checkpoint(build_model(config), config, folder)


def test_a_few_steps_lower_the_loss(tmp_path):
    s = settings(tmp_path, steps=40)
    summary = train(s, progress=False)
    log = json.loads((tmp_path / "run" / "state.json").read_text())["log"]
    assert [entry["step"] for entry in log] == list(range(1, 41))
    assert summary["tokens"] == 40 * 4 * 2 * 32 and summary["tokens_per_s"] > 0
    first, last = log[0]["loss"], sum(entry["loss"] for entry in log[-5:]) / 5
    assert first > 5.0  # about ln(256): an untrained model guesses bytes uniformly
    assert last < first - 1.5
    # the saved model, judged on validation text by the teacher-forced pass, against the untrained model
    text = torch.tensor(list(load_split(prepare(DEFAULT_CACHE), "validation")[:2048]))[None]
    torch.manual_seed(s.seed)
    untrained = bits_per_token(build_model(TINY).eval(), text).mean().item()
    trained = bits_per_token(load_checkpoint(tmp_path / "run" / "model").model, text).mean().item()
    assert trained < untrained - 2.0
    assert summary["val_bpb"] == pytest.approx(bits_per_token(
        load_checkpoint(tmp_path / "run" / "model").model, text[:, :1024]).mean().item(), abs=1e-4)


@pytest.mark.parametrize("casts", [{}, {"cast_samples": 0.5, "cast_segments": 1, "cast_real_names": 0.5}, {"heading_weight": 4.0}],
                         ids=["plain", "cast samples", "heading weight"])
def test_resuming_matches_an_uninterrupted_run(tmp_path, casts):
    # warmup covers every step, so the learning rate does not depend on the number of steps asked for
    straight = settings(tmp_path / "straight", steps=6, warmup_steps=100, **casts)
    stopped = settings(tmp_path / "stopped", steps=3, warmup_steps=100, **casts)
    train(straight, progress=False)
    train(stopped, progress=False)
    train(replace(stopped, steps=6), progress=False)
    logs = [json.loads((tmp_path / run / "run" / "state.json").read_text())["log"] for run in ("straight", "stopped")]
    assert [e["step"] for e in logs[1]] == list(range(1, 7))
    assert [e["loss"] for e in logs[1]] == [e["loss"] for e in logs[0]]
    weights = [load_file(tmp_path / run / "run" / "model" / WEIGHTS_FILE) for run in ("straight", "stopped")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    if casts:  # and the casts or weights did reach the loss: the same seed without them gives another first loss
        train(settings(tmp_path / "plain", steps=1, warmup_steps=100), progress=False)
        plain = json.loads((tmp_path / "plain" / "run" / "state.json").read_text())["log"]
        assert plain[0]["loss"] != logs[0][0]["loss"]


def test_fine_tuning_starts_from_the_checkpoint_logs_its_figures_and_resumes_exactly(tmp_path):
    init = saved_tiny(tmp_path / "init")
    text = torch.tensor(list(load_split(prepare(DEFAULT_CACHE), "validation")[:1024]))[None]
    frozen = settings(tmp_path / "frozen", steps=2, lr=0.0, init_from=str(init))
    train(frozen, progress=False)
    start = load_file(init / WEIGHTS_FILE)
    assert all(torch.equal(v, start[k]) for k, v in load_file(tmp_path / "frozen/run/model" / WEIGHTS_FILE).items())
    log = json.loads((tmp_path / "frozen/run/state.json").read_text())["log"]
    assert [e["step"] for e in log] == [0, 1, 2] and "loss" not in log[0]
    assert log[0]["val_bpb"] == pytest.approx(bits_per_token(load_checkpoint(init).model, text).mean().item(),
                                              abs=1e-4)
    # from the same weights, a stopped and resumed fine-tuning run is the uninterrupted one
    straight = settings(tmp_path / "straight", steps=4, warmup_steps=100, init_from=str(init))
    stopped = settings(tmp_path / "stopped", steps=2, warmup_steps=100, init_from=str(init))
    for s in (straight, stopped, replace(stopped, steps=4)):
        train(s, progress=False)
    logs = [json.loads((tmp_path / run / "run/state.json").read_text())["log"] for run in ("straight", "stopped")]
    assert [e["step"] for e in logs[1]] == [0, 1, 2, 3, 4]
    assert [e.get("loss") for e in logs[1]] == [e.get("loss") for e in logs[0]]
    assert logs[1][0] == logs[0][0] and logs[1][-1]["val_bpb"] == logs[0][-1]["val_bpb"]
    scratch = settings(tmp_path / "scratch", steps=4, warmup_steps=100)
    train(scratch, progress=False)
    assert json.loads((tmp_path / "scratch/run/state.json").read_text())["log"][0]["loss"] != logs[0][1]["loss"]


def test_init_from_a_checkpoint_of_another_shape_is_refused_in_one_line(tmp_path):
    other = saved_tiny(tmp_path / "other", config={**TINY, "attn_layers": {**TINY["attn_layers"], "dim": 16}})
    with pytest.raises(XLDemoError, match=r"--init-from .*other: its weights do not fit --model-config \(") as e:
        train(settings(tmp_path, steps=1, init_from=str(other)), progress=False)
    assert "\n" not in str(e.value)


def test_validation_logs_the_speaker_measure_on_the_validation_play(tmp_path):
    s = settings(tmp_path, steps=2, eval_every=2, speaker_prompts=1, speaker_samples=2, speaker_new_tokens=64)
    summary = train(s, progress=False)
    log = json.loads((tmp_path / "run/state.json").read_text())["log"]
    assert "val_speakers" not in log[0] and log[1]["val_speakers"] == summary["val_speakers"]
    for mode in ("memory", "no_memory"):
        figures = summary["val_speakers"][mode]
        assert 0 <= figures["new_hits"] <= figures["hits"] <= figures["names"]


def test_folio_adds_the_training_plays_folio_editions_after_the_modern_ones():
    folder = prepare(DEFAULT_CACHE)
    assert training_text(folder) == load_split(folder, "train")
    assert training_text(folder, folio=True) == load_split(folder, "train") + SEPARATOR + load_split(folder,
                                                                                                     "train_folio")


def test_renamed_copies_follow_the_training_text_and_speak_with_made_up_names_only(tmp_path):
    folder = prepare(DEFAULT_CACHE)
    assert training_corpus(settings(tmp_path), folder) == training_text(folder)
    corpus = training_corpus(settings(tmp_path, renamed_copies=1), folder)
    assert corpus.startswith(training_text(folder) + SEPARATOR)
    copies = corpus[len(training_text(folder) + SEPARATOR):].decode("latin-1")
    plays = train_plays(DEFAULT_CACHE)
    real = set().union(*map(name_words, plays.values())) - generic_words(plays)
    names = speaker_names(copies)
    assert len(names) > 10_000 and not {w for name in names for w in name.split()} & real


def test_cast_samples_take_their_share_of_each_batch_and_replay_with_the_step(tmp_path):
    folder = prepare(DEFAULT_CACHE)
    data = torch.frombuffer(bytearray(training_text(folder)), dtype=torch.uint8)
    casts = CastSampler(train_plays(DEFAULT_CACHE))
    s = settings(tmp_path, cast_samples=0.5, batch_size=4)
    plain = sample_batch(data, 513, 4, s.seed, 3, 0)
    mixed = with_cast_samples(plain, casts, s, 3, 0)
    assert mixed.shape == plain.shape and mixed.dtype == plain.dtype and torch.equal(mixed[:2], plain[:2])
    assert all(bytes(row.tolist()).startswith(b"PERSONS REPRESENTED\n\n") for row in mixed[2:])
    assert torch.equal(mixed, with_cast_samples(plain, casts, s, 3, 0))  # resuming replays the same samples
    assert not torch.equal(mixed[2:], with_cast_samples(plain, casts, s, 4, 0)[2:])
    assert torch.equal(with_cast_samples(plain, casts, replace(s, cast_samples=0.1), 3, 0), plain)  # rounds to none
    whole = with_cast_samples(plain, casts, replace(s, cast_samples=1.0), 3, 0)
    assert all(bytes(row.tolist()).startswith(b"PERSONS REPRESENTED\n\n") for row in whole)
    short = with_cast_samples(plain, casts, replace(s, cast_segments=1), 3, 0)  # segments of 256: two casts a row
    for row in short[2:]:
        text = bytes(row.tolist())
        assert len(text) == 513 and text.startswith(b"PERSONS REPRESENTED\n\n")
        assert text.find(b"PERSONS REPRESENTED", 1) == 256
    with pytest.raises(XLDemoError, match="cast samples must be a share from 0 to 1, got 1.5"):
        train(replace(s, cast_samples=1.5, steps=1), progress=False)
    with pytest.raises(XLDemoError, match="cast real names must be a share from 0 to 1, got -0.1"):
        train(replace(s, cast_real_names=-0.1, steps=1), progress=False)
    with pytest.raises(XLDemoError, match=r"cast segments must be from 0 to --segments \(2\), got 3"):
        train(replace(s, cast_segments=3, steps=1), progress=False)


def test_heading_weights_mark_the_names_that_open_speeches():
    text = b"ACT I.\nSCENE 2. An island.\n\nPROSPERO.\nMiranda, hear. O.\n\nLADY MACBETH.\nI do.\n"
    weights = heading_weights(torch.tensor([list(text)]), 5.0)[0].tolist()
    assert bytes(b for b, w in zip(text, weights) if w == 5.0) == b"PROSPEROLADY MACBETH"
    assert set(weights) == {1.0, 5.0}


def test_the_heading_weighted_loss_is_the_wrappers_at_weight_one_and_weights_the_teacher_forced_bytes():
    torch.manual_seed(0)
    net = build_model(TINY).eval()  # no dropout: the two passes see the same network
    play = load_split(prepare(DEFAULT_CACHE), "validation")
    start = play.index(b"\n\nBRUTUS.\n") - 50
    batch = torch.tensor([list(play[start:start + 4 * 32 + 1]), list(play[start + 7:start + 7 + 4 * 32 + 1])])
    ours, theirs = HeadingWeightedLoss(net, 1.0)(batch), XLAutoregressiveWrapper(net)(batch)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    grads = []
    for loss in (ours, theirs):
        net.zero_grad()
        loss.backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(*grads))
    # at weight 3, the teacher-forced pass's own cross-entropies, weighted by hand
    weights = heading_weights(batch, 3.0)[:, 1:]
    assert (weights == 3.0).sum() >= 10  # BRUTUS in both rows
    nats = bits_per_token(net, batch) * math.log(2)
    expected = (nats * weights).sum() / weights.sum()
    assert HeadingWeightedLoss(net, 3.0)(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(expected.item() - nats.mean().item()) > 1e-4  # the weights change the loss, beyond rounding


def test_a_heading_weight_of_zero_or_less_is_refused_in_one_line(tmp_path):
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(XLDemoError, match="heading weight must be a number above 0"):
            train(settings(tmp_path, heading_weight=bad, steps=1), progress=False)


def test_the_memory_config_is_the_shipped_shape_with_a_memory_of_two_segments():
    base = json.loads((MODEL_CONFIGS / "shakespeare-xl.json").read_text())
    memory = json.loads((MODEL_CONFIGS / "shakespeare-xl-memory.json").read_text())
    assert memory == {**base, "max_mem_len": 512}


def test_learning_rate_warms_up_then_decays_to_its_floor():
    s = TrainSettings(steps=1000, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    assert learning_rate(0, s) == pytest.approx(1e-5)
    assert learning_rate(99, s) == pytest.approx(1e-3)
    assert learning_rate(550, s) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert learning_rate(999, s) == pytest.approx(1e-4, rel=1e-3)
    rates = [learning_rate(step, s) for step in range(1000)]
    assert all(a < b for a, b in zip(rates[:99], rates[1:100]))
    assert all(a >= b for a, b in zip(rates[99:], rates[100:]))


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_dir(),
                    reason=f"{DEFAULT_CHECKPOINT} does not exist yet: it is copied from the training run's model")
def test_shipped_checkpoint_loads_strictly_with_plain_x_transformers():
    config = json.loads((DEFAULT_CHECKPOINT / CONFIG_FILE).read_text())
    assert config.pop("tokenizer") == "bytes"
    model = TransformerWrapper(attn_layers=Decoder(**config.pop("attn_layers")), **config)
    state = load_file(DEFAULT_CHECKPOINT / WEIGHTS_FILE)
    model.load_state_dict(state, strict=True)
    assert all(t.dtype == torch.float32 for t in state.values())


def test_runs_unchanged_under_torchrun_with_two_processes(tmp_path):
    """Data parallel as on several GPUs, here two CPU processes over gloo: both step together, rank 0 writes,
    fine-tuning a checkpoint on the folio editions too and validating with the speaker measure."""
    s = settings(tmp_path, steps=3)
    init = saved_tiny(tmp_path / "init")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "xldemo",
               "train", "--model-config", s.model_config, "--out", s.out, "--data", s.data, "--steps", "3",
               "--batch-size", "2", "--segments", "2", "--eval-every", "1000", "--bf16", "off",
               "--init-from", str(init), "--folio", "--eval-bytes", "1024", "--speaker-prompts", "1",
               "--speaker-samples", "2", "--speaker-new-tokens", "16"]
    # a session of its own, so that a hung worker can be killed with torchrun rather than outlive the test
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        stdout, stderr = run.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        pytest.fail("torchrun did not finish in 240 s")
    assert run.returncode == 0, stderr[-2000:]
    log = json.loads((tmp_path / "run" / "state.json").read_text())["log"]
    assert [e["step"] for e in log] == [0, 1, 2, 3] and all(math.isfinite(e["loss"]) for e in log[1:])
    assert "val_speakers" in log[0] and "val_speakers" in log[-1]
    assert "'tokens': 768" in stdout  # 3 steps of 2 rows of 2 segments of 32 tokens, on each of 2 ranks
    load_checkpoint(tmp_path / "run" / "model")
