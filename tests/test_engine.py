"""Training engine: schedule, optimiser groups, exact resume, signals, non-finite loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY, tiny_config
from dropmae.config import Cell
from dropmae.demo.videos import build_demo_video_tree
from dropmae.engine.checkpoint import LAST_CHECKPOINT, atomic_torch_save, epoch_checkpoint_name, load_checkpoint
from dropmae.engine.pretrain import METRICS_LOG, NonFiniteLossError, build_model, pretrain
from dropmae.engine.schedule import learning_rate_at, scaled_learning_rate


def test_learning_rate_schedule():
    assert scaled_learning_rate(1.5e-4, 4096) == pytest.approx(2.4e-3)
    peak = 1.0
    assert learning_rate_at(0.0, peak, 0.0, 40, 400) == 0.0
    assert learning_rate_at(20.0, peak, 0.0, 40, 400) == pytest.approx(0.5)
    assert learning_rate_at(40.0, peak, 0.0, 40, 400) == pytest.approx(1.0)
    assert learning_rate_at(220.0, peak, 0.0, 40, 400) == pytest.approx(0.5)
    assert learning_rate_at(400.0, peak, 0.1, 40, 400) == pytest.approx(0.1)


def test_weight_decay_skips_biases_and_norms():
    from timm.optim import param_groups_weight_decay

    model = build_model(tiny_config(), Cell("dropmae", 2))
    groups = param_groups_weight_decay(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert "blocks.0.norm1.weight" in no_decay and "blocks.0.attn.qkv.bias" in no_decay
    assert "blocks.0.attn.qkv.weight" in decay and "decoder_pred.weight" in decay
    assert "pos_embed" not in decay | no_decay  # fixed table, not trained


def _assert_same_state(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_resume_after_any_step_is_bitwise_exact(frames_root, tmp_path):
    """6 videos, batch 2: 3 steps per epoch, 6 steps in all. Stop after step 1, then after
    3 more (across the epoch boundary), then finish: weights and optimiser state equal."""
    config = tiny_config(keep_epochs=[1])
    run = Cell("dropmae", 2)
    straight = pretrain(config, run, frames_root, tmp_path / "straight", progress=False)
    assert straight.status == "completed" and straight.global_step == 6

    resumed_dir = tmp_path / "resumed"
    first = pretrain(config, run, frames_root, resumed_dir, stop_after_steps=1, progress=False)
    assert first.status == "interrupted" and first.global_step == 1
    state = load_checkpoint(resumed_dir / LAST_CHECKPOINT)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 1, 1)
    second = pretrain(config, run, frames_root, resumed_dir, stop_after_steps=3, progress=False)
    assert second.status == "interrupted" and second.global_step == 4
    third = pretrain(config, run, frames_root, resumed_dir, progress=False)
    assert third.status == "completed" and third.global_step == 6

    a = load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)
    b = load_checkpoint(resumed_dir / LAST_CHECKPOINT)
    _assert_same_state(a["model"], b["model"])
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        _assert_same_state(pa, pb)
    # Plain data inside: the config and the run, not pickled objects.
    assert b["config"]["pretrain"]["asad_p"] == 0.3 and b["run"]["method"] == "dropmae"
    assert (tmp_path / "straight" / epoch_checkpoint_name(1)).is_file()
    # A finished run does nothing more when called again.
    again = pretrain(config, run, frames_root, resumed_dir, progress=False)
    assert again.status == "completed" and again.global_step == 6


def test_changing_the_data_changes_the_result(frames_root, tmp_path):
    """Guard for the test above: a different seed gives different weights."""
    run = Cell("dropmae", 1)
    a = pretrain(tiny_config(epochs=[1]), run, frames_root, tmp_path / "a", progress=False)
    b = pretrain(tiny_config(epochs=[1], seed=1), run, frames_root, tmp_path / "b", progress=False)
    wa = load_checkpoint(a.checkpoint)["model"]["decoder_pred.weight"]
    wb = load_checkpoint(b.checkpoint)["model"]["decoder_pred.weight"]
    assert not torch.equal(wa, wb)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(frames_root, tmp_path):
    config = tiny_config(blr=1e36, warmup_epochs=0, checkpoint_every_steps=1, epochs=[2])
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+, step \d+ \(global step (\d+)"):
        pretrain(config, Cell("dropmae", 2), frames_root, tmp_path / "nan", progress=False)
    state = load_checkpoint(tmp_path / "nan" / LAST_CHECKPOINT)
    assert state["global_step"] >= 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_too_few_videos_for_a_batch_is_a_clear_error(frames_root, tmp_path):
    with pytest.raises(ValueError, match="pretrain.batch_size"):
        pretrain(tiny_config(batch_size=64), Cell("dropmae", 1), frames_root, tmp_path / "x", progress=False)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_signal_writes_checkpoint_and_exits_cleanly(frames_root, tmp_path, sig):
    config_file = tmp_path / "params.yaml"
    values = json.loads(json.dumps(TINY))
    values["pretrain"]["epochs"] = [500]
    import yaml

    config_file.write_text(yaml.safe_dump(values))
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "dropmae.cli", "pretrain", "--config", str(config_file), "--data", str(frames_root),
         "--output", str(run_dir), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    log = run_dir / METRICS_LOG
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.is_file() and '"event": "step"' in log.read_text():
            break
        if process.poll() is not None:
            pytest.fail(f"trainer exited early: {process.stdout.read()}")
        time.sleep(0.2)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 75, output  # EX_TEMPFAIL: stopped with its checkpoint, rerun to resume
    assert "interrupted" in output
    state = load_checkpoint(run_dir / LAST_CHECKPOINT)
    assert 0 < state["global_step"] < 1500
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[-1]["event"] == "interrupted" and events[-1]["reason"] == signal.Signals(sig).name
    assert events[-1]["global_step"] == state["global_step"]


def test_cli_rejects_bad_config_before_training(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dropmae.cli", "pretrain", "--set", "pretrain.asad_p=1.5", "--data", str(tmp_path),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "pretrain.asad_p" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.cpu_count() is None, reason="needs a CPU count")
def test_distributed_two_processes_on_cpu(frames_root, tmp_path):
    """DDP with gloo, world size 2 under torchrun: both ranks train, rank 0 writes one checkpoint
    holding the RNG state of both ranks."""
    import yaml

    values = json.loads(json.dumps(TINY))
    values["pretrain"]["epochs"] = [1]
    values["pretrain"]["batch_size"] = 1
    config_file = tmp_path / "params.yaml"
    config_file.write_text(yaml.safe_dump(values))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dropmae.cli",
         "pretrain", "--config", str(config_file), "--data", str(frames_root), "--output", str(tmp_path / "ddp"),
         "--quiet", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    state = load_checkpoint(tmp_path / "ddp" / LAST_CHECKPOINT)
    assert len(state["rng"]) == 2
    assert state["global_step"] == 3  # 6 videos / 2 ranks / batch 1


def test_cli_extract_pretrain_reconstruct(tmp_path):
    """The three commands chained on real clips: frames, a short run, a PNG grid."""
    from PIL import Image

    videos = build_demo_video_tree(tmp_path / "videos", clip_frames=12, short_side=48, max_clips=4)
    frames = tmp_path / "frames"
    cli = [sys.executable, "-m", "dropmae.cli"]
    done = subprocess.run(cli + ["extract-frames", "--source", str(videos), "--output", str(frames), "--quiet",
                                 "--set", "data.extraction.workers=1", "--set", "data.extraction.val_fraction=0.0"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "extracted 4 of 4 videos" in done.stdout
    import yaml

    config_file = tmp_path / "params.yaml"
    values = json.loads(json.dumps(TINY))
    values["pretrain"]["epochs"] = [1]
    config_file.write_text(yaml.safe_dump(values))
    done = subprocess.run(cli + ["pretrain", "--config", str(config_file), "--data", str(frames),
                                 "--output", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    png = tmp_path / "recon.png"
    done = subprocess.run(cli + ["reconstruct", "--checkpoint", str(tmp_path / "run" / LAST_CHECKPOINT),
                                 "--data", str(frames), "--output", str(png), "--pairs", "2", "--split", "train"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with Image.open(png) as image:
        width, height = image.size
    assert height > width  # two pairs x two frames in rows, three columns


def test_the_same_state_saves_to_the_same_bytes(tmp_path):
    """Checkpoint hashes (the tables print them) change only when the contents do."""
    state = {"model": build_model(tiny_config(), Cell("dropmae", 1)).state_dict(), "epoch": 3}
    atomic_torch_save(state, tmp_path / "a.pth")
    atomic_torch_save(state, tmp_path / "b.pth")
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = load_checkpoint(tmp_path / "b.pth")
    assert loaded["epoch"] == 3 and all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())


def test_every_log_every_steps_step_prints_a_line_and_logs_rate_eta_and_memory(frames_root, tmp_path, capsys):
    """6 steps (3 per epoch) at log_every_steps 2: steps 2, 4 and 6 and the end of epoch 1 (step 3) on
    stdout (no bar: stdout is not a terminal) and in log.jsonl, each with the lr, loss, pairs/s, ETA
    and peak memory."""
    config = tiny_config(log_every_steps=2, batch_size=4, repeated_sampling=2)  # 2 videos x 2 pairs a step
    outcome = pretrain(config, Cell("dropmae", 2), frames_root, tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if " step " in line and "loss" in line]
    assert [line.split(" step ")[1].split()[0] for line in lines] == ["2/6", "3/6", "4/6", "6/6"]
    assert "epoch 1/2" in lines[0] and "epoch 2/2" in lines[-1] and "eta 0:00:00" in lines[-1]
    assert all("pairs/s" in line and "peak RSS" in line and " MB" in line for line in lines)
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_LOG).read_text().splitlines()]
    steps = [record for record in records if record["event"] == "step"]
    assert [record["global_step"] for record in steps] == [2, 3, 4, 6]
    assert steps[-1]["loss"] == pytest.approx(outcome.last_loss)
    for record in steps:
        assert record["total_steps"] == 6 and record["pairs_per_s"] > 0 and record["peak_memory_mb"] > 10
        assert record["eta_s"] >= 0 and record["lr"] > 0


def test_a_run_writes_its_loss_and_lr_curves_when_it_completes(frames_root, tmp_path):
    """loss.csv and lr.csv (step, value), from log.jsonl, once the run completes (here after a resume)."""
    import pandas as pd

    config = tiny_config(log_every_steps=1)
    run_dir = tmp_path / "run"
    pretrain(config, Cell("dropmae", 2), frames_root, run_dir, stop_after_steps=4, progress=False)
    assert not (run_dir / "loss.csv").exists()
    pretrain(config, Cell("dropmae", 2), frames_root, run_dir, progress=False)
    steps = [r for r in map(json.loads, (run_dir / METRICS_LOG).read_text().splitlines()) if r["event"] == "step"]
    loss, lr = pd.read_csv(run_dir / "loss.csv"), pd.read_csv(run_dir / "lr.csv")
    assert list(loss.columns) == ["step", "loss"] and list(lr.columns) == ["step", "lr"]
    assert list(loss["step"]) == list(lr["step"]) == [1, 2, 3, 4, 5, 6]
    assert loss["loss"].tolist() == pytest.approx([r["loss"] for r in steps])
    assert lr["lr"].tolist() == pytest.approx([r["lr"] for r in steps])


def test_a_step_logged_twice_after_a_resume_counts_once_with_the_later_value(tmp_path):
    """A job killed after step 5 resumes from the checkpoint of step 3 and logs steps 4 and 5 again."""
    from dropmae.engine.curves import step_records

    log = tmp_path / METRICS_LOG
    steps = [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.65), (5, 0.6), (4, 0.66), (5, 0.61), (6, 0.5)]
    log.write_text("".join(json.dumps({"event": "step", "global_step": g, "loss": v, "lr": 0.1}) + "\n"
                           for g, v in steps))
    frame = step_records(log)
    assert frame["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert frame["loss"].tolist() == [0.9, 0.8, 0.7, 0.66, 0.61, 0.5]
