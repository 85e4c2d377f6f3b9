"""`dropmae compare-log`: our per-epoch training loss against a published MAE-style log.txt."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from PIL import Image

from conftest import tiny_config
from dropmae.analysis.training_log import (
    TrainingLogError,
    compare_losses,
    read_reference_log,
    read_run_log,
    write_comparison,
)
from dropmae.cli import main
from dropmae.config import Cell
from dropmae.engine.loop import METRICS_LOG, SUMMARY_FILE
from dropmae.engine.pretrain import pretrain


def write_lines(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def mae_log(path, losses: dict[int, float]) -> None:
    """MAE main_pretrain.py's log.txt: train_* stats of each epoch, then the 0-based epoch."""
    write_lines(path, [{"train_lr": 1e-4 * (e + 1), "train_loss": loss, "epoch": e} for e, loss in losses.items()])


def loop_log(run_dir, epoch_means: list[float], planned: int, finished: bool = True) -> None:
    """A log.jsonl as dropmae.engine.loop writes it: start, step records, epoch records counting
    epochs completed, summary.json when the run finished."""
    run_dir.mkdir(parents=True)
    records = [{"event": "start", "run": {"method": "dropmae", "epochs": planned}, "steps_per_epoch": 2,
                "samples": 4, "world_size": 1}]
    for epoch, mean in enumerate(epoch_means):
        for step in range(2):  # two steps whose mean is the epoch's
            records.append({"event": "step", "epoch": epoch, "step": step, "global_step": 2 * epoch + step + 1,
                            "lr": 1e-3, "loss": mean + (0.01 if step else -0.01)})
        records.append({"event": "epoch", "epoch": epoch + 1, "global_step": 2 * epoch + 2, "train_loss": mean,
                        "time": 1.7e9})
    write_lines(run_dir / METRICS_LOG, records)
    if finished:
        (run_dir / SUMMARY_FILE).write_text(json.dumps({"task": "dropmae", "epochs": planned, "global_step": 4}))


def rows(table: pd.DataFrame, alignment: str, row: str = "epoch") -> pd.DataFrame:
    return table[(table["alignment"] == alignment) & (table["row"] == row)].reset_index(drop=True)


def test_aligned_by_epoch_and_by_fraction_as_computed_by_hand(tmp_path):
    """Ours: 2 epochs (0.9, 0.55); reference: 4 epochs (1.0, 0.8, 0.6, 0.5). Our epoch 0 sits at
    fraction 0.25, the middle of reference epochs 0 and 1; our epoch 1 at 0.75, between 2 and 3."""
    loop_log(tmp_path / "run", [0.9, 0.55], planned=2)
    reference = tmp_path / "log.txt"
    mae_log(reference, {0: 1.0, 1: 0.8, 2: 0.7, 3: 0.5})
    with reference.open("a") as handle:  # a resumed MAE run logs epoch 2 again: the later line counts
        handle.write(json.dumps({"train_loss": 0.6, "epoch": 2}) + "\n\n")

    ours, ref = read_run_log(tmp_path / "run"), read_reference_log(reference)
    assert ours.losses == {0: 0.9, 1: 0.55} and ours.total_epochs == 2
    assert ref.losses == {0: 1.0, 1: 0.8, 2: 0.6, 3: 0.5} and ref.total_epochs == 4
    table = compare_losses(ours, ref)

    by_epoch = rows(table, "epoch")
    assert by_epoch["epoch"].tolist() == [0, 1]
    assert by_epoch["ours"].tolist() == [0.9, 0.55]
    assert by_epoch["reference"].tolist() == [1.0, 0.8]
    assert by_epoch["difference"].tolist() == pytest.approx([0.9 - 1.0, 0.55 - 0.8])
    assert by_epoch["ratio"].tolist() == pytest.approx([0.9, 0.6875])

    by_fraction = rows(table, "fraction")
    assert by_fraction["epoch"].tolist() == [0, 1]
    assert by_fraction["fraction"].tolist() == pytest.approx([0.25, 0.75])
    assert by_fraction["reference_epoch"].tolist() == pytest.approx([0.5, 2.5])
    assert by_fraction["reference"].tolist() == pytest.approx([0.9, 0.55])
    assert by_fraction["difference"].tolist() == pytest.approx([0.0, 0.0])
    assert by_fraction["ratio"].tolist() == pytest.approx([1.0, 1.0])

    last = rows(table, "epoch", "last")
    assert last["epoch"].tolist() == [1] and last["difference"].tolist() == pytest.approx([-0.25])
    mean = rows(table, "epoch", "mean")
    assert mean["ours"].tolist() == pytest.approx([0.725]) and mean["reference"].tolist() == pytest.approx([0.9])
    assert mean["ratio"].tolist() == pytest.approx([0.725 / 0.9])
    assert rows(table, "fraction", "last")["reference"].tolist() == pytest.approx([0.55])


def test_same_planned_epochs_compare_by_epoch_only(tmp_path):
    loop_log(tmp_path / "run", [1.2, 0.7, 0.4], planned=4, finished=False)  # still running: plan from the start record
    reference = tmp_path / "ref.jsonl"
    mae_log(reference, {0: 1.0, 2: 0.5, 3: 0.45})  # a log written every other epoch
    table = compare_losses(read_run_log(tmp_path / "run"), read_reference_log(reference, total_epochs=4))
    assert set(table["alignment"]) == {"epoch"}
    assert rows(table, "epoch")["epoch"].tolist() == [0, 2]
    assert rows(table, "epoch")["difference"].tolist() == pytest.approx([0.2, -0.1])


def test_a_real_run_log_gives_the_loops_epoch_means(frames_root, tmp_path):
    """A tiny real pretraining (3 epochs of 3 steps, every step logged) against a 6-epoch reference."""
    run_dir = tmp_path / "run"
    pretrain(tiny_config(epochs=[3], log_every_steps=1), Cell("dropmae", 3), frames_root, run_dir,
             progress=False)
    records = [json.loads(line) for line in (run_dir / METRICS_LOG).read_text().splitlines()]
    step_means = {e: pd.Series([r["loss"] for r in records if r["event"] == "step" and r["epoch"] == e]).mean()
                  for e in range(3)}
    ours = read_run_log(run_dir)
    assert ours.total_epochs == 3 and ours.resumed_mid_epoch == ()
    assert ours.losses == pytest.approx(step_means)

    reference = tmp_path / "log.txt"
    mae_log(reference, {e: 1.0 - 0.1 * e for e in range(6)})
    table, paths = write_comparison(run_dir, reference, tmp_path / "out")
    by_epoch = rows(table, "epoch")
    assert by_epoch["epoch"].tolist() == [0, 1, 2]
    assert by_epoch["difference"].tolist() == pytest.approx([step_means[e] - (1.0 - 0.1 * e) for e in range(3)])
    # Our epoch e of 3 is at fraction (e + 0.5) / 3: reference epoch 2e + 0.5, between 2e and 2e + 1.
    by_fraction = rows(table, "fraction")
    assert by_fraction["reference"].tolist() == pytest.approx([1.0 - 0.1 * (2 * e + 0.5) for e in range(3)])
    assert pd.read_csv(paths["csv"])["ours"].tolist() == pytest.approx(table["ours"].tolist())


def test_a_run_resumed_mid_epoch_is_flagged(frames_root, tmp_path):
    config, run = tiny_config(epochs=[2]), Cell("dropmae", 2)
    pretrain(config, run, frames_root, tmp_path / "run", stop_after_steps=1, progress=False)
    pretrain(config, run, frames_root, tmp_path / "run", progress=False)
    assert read_run_log(tmp_path / "run").resumed_mid_epoch == (0,)


def test_cli_prints_the_table_and_writes_csv_markdown_png(tmp_path, capsys):
    loop_log(tmp_path / "run", [0.9, 0.55], planned=2)
    mae_log(tmp_path / "k400.txt", {0: 1.0, 1: 0.8, 2: 0.6, 3: 0.5})
    assert main(["compare-log", str(tmp_path / "run"), str(tmp_path / "k400.txt"), "--log-y"]) == 0
    printed = capsys.readouterr().out
    folder = tmp_path / "run" / "compare_k400"
    for name in ("loss_comparison.csv", "loss_comparison.md"):
        assert str(folder / name) in printed
    assert "## Aligned by epoch" in printed and "## Aligned by fraction" in printed and "-0.2500" in printed
    assert (folder / "loss_comparison.md").read_text() in printed
    assert len(pd.read_csv(folder / "loss_comparison.csv")) == 2 + 2 + 2 + 2  # per alignment: 2 epochs, last, mean
    with Image.open(folder / "loss_comparison.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]  # two panels side by side

    assert main(["compare-log", str(tmp_path / "run"), str(tmp_path / "k400.txt"), "--output",
                 str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "loss_comparison.png").is_file()


@pytest.mark.parametrize("lines, message", [
    (['{"train_loss": 1.0, "epoch": 0}', '{"train_loss": 0.9, "epoch": 1', '{"train_loss": 0.8, "epoch": 2}'],
     "line 2: not valid JSON"),
    (['{"train_loss": 1.0, "epoch": 0}', "", '{"train_lr": 0.001, "epoch": 1}'], "line 3: no 'train_loss' key"),
    (['{"train_loss": 1.0}'], "line 1: no 'epoch' key"),
    (['{"train_loss": 1.0, "epoch": 0.5}'], "line 1: 'epoch' is 0.5, not an integer"),
    (['{"train_loss": "1.0", "epoch": 0}'], "line 1: 'train_loss' is '1.0', not a finite number"),
    (['{"train_loss": NaN, "epoch": 0}'], "line 1: 'train_loss' is nan, not a finite number"),
    (["[1.0, 0]"], "line 1: expected a JSON object, got list"),
    ([], "empty file, no JSON lines"),
    (["", "  "], "empty file, no JSON lines"),
])
def test_bad_reference_lines_name_the_file_and_line(tmp_path, capsys, lines, message):
    loop_log(tmp_path / "run", [0.9, 0.55], planned=2)
    reference = tmp_path / "published.txt"
    reference.write_text("\n".join(lines))
    with pytest.raises(TrainingLogError, match=f"^{re.escape(str(reference))}"):
        read_reference_log(reference)
    assert main(["compare-log", str(tmp_path / "run"), str(reference)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"dropmae: compare-log: {reference}") and message in error
    assert error.count("\n") == 1  # one line, no traceback


def test_bad_runs_name_what_is_missing(tmp_path, capsys):
    reference = tmp_path / "log.txt"
    mae_log(reference, {0: 1.0})
    loop_log(tmp_path / "later", [0.9], planned=1)
    cases = {tmp_path / "nowhere": "nowhere: no such run folder"}
    (tmp_path / "no_log").mkdir()
    cases[tmp_path / "no_log"] = f"{tmp_path / 'no_log' / METRICS_LOG}: not found"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / METRICS_LOG).touch()
    cases[tmp_path / "empty"] = f"{tmp_path / 'empty' / METRICS_LOG}: empty file"
    (tmp_path / "started").mkdir()
    write_lines(tmp_path / "started" / METRICS_LOG, [{"event": "start", "run": {"epochs": 2}},
                                                      {"event": "step", "epoch": 0, "step": 0, "loss": 1.0}])
    cases[tmp_path / "started"] = "no epoch record"
    (tmp_path / "broken").mkdir()
    write_lines(tmp_path / "broken" / METRICS_LOG, [{"event": "epoch", "epoch": 1}])
    cases[tmp_path / "broken"] = f"{tmp_path / 'broken' / METRICS_LOG}, line 1: no 'train_loss' key"
    for run_dir, message in cases.items():
        assert main(["compare-log", str(run_dir), str(reference)]) == 2
        assert message in capsys.readouterr().err
    assert main(["compare-log", str(tmp_path / "later"), str(tmp_path / "missing.txt")]) == 2
    assert f"{tmp_path / 'missing.txt'}: no such file" in capsys.readouterr().err

    mae_log(reference, {5: 1.0, 6: 0.9})
    with pytest.raises(TrainingLogError, match="share no epoch"):
        compare_losses(read_run_log(tmp_path / "later"), read_reference_log(reference))
