"""The experiment DAG, run for real: Snakemake with the local profile, DVC, bad configurations,
and the agreement between the Snakefile and dvc.yaml."""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from dropmae.config import Cell, config_to_dict, json_schema, load_config
from dropmae.engine import pretrain as pretrain_module
from dropmae.engine.pretrain import load_pretrained
from dropmae.engine.checkpoint import load_checkpoint
from dropmae.segmentation.model import dropseg_from_checkpoint
from dropmae.segmentation.probe import frame_encoder_from_checkpoint
from dropmae.segmentation.train import segmenter_model_arguments
from dropmae.demo.benchmark import DemoBenchmarkSettings
from dropmae.tracking.model import droptrack_from_checkpoint
from dropmae.tracking.train import tracker_model_arguments
from dropmae.workflow import layout, stages, tables
from workflow_support import (
    REPO,
    TINY_OVERLAY,
    copy_repository,
    with_segmentation,
    with_tracking,
    dry_run_jobs,
    job_counts,
    run,
    seed_demo_videos,
    snakemake,
    write_yaml,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dag(tmp_path_factory, demo_tree) -> Path:
    """A scratch copy of the repository where the tiny DAG has been run once with the local profile."""
    repo = copy_repository(tmp_path_factory.mktemp("dag") / "repo")
    seed_demo_videos(repo, demo_tree)
    write_yaml(repo / "tiny.yaml", with_segmentation(with_tracking(TINY_OVERLAY)))
    # About 40 jobs, each a fresh Python process: on a 2-core machine shared with other work, over 10 minutes.
    snakemake(repo, "--profile", "profiles/local", "--cores", "2", configfiles=["tiny.yaml"], timeout=1500)
    return repo


def test_the_dag_builds_every_table_from_cell_results(demo_dag):
    for table in layout.TABLES:
        assert (demo_dag / layout.table_csv(table)).is_file()
        assert (demo_dag / layout.table_markdown(table)).read_text().startswith("# ")
    for figure in (layout.ATTENTION_PLOT, "results/cells/demo/dropmae_ep1/temporal_matching.png",
                   "results/cells/demo/twinmae_ep1/reconstruction.png"):
        assert (demo_dag / figure).stat().st_size > 1000
    table = pd.read_csv(demo_dag / layout.table_csv("pretraining"))
    assert list(table["method"]) == ["No pre-training", "Random init (never trained)",
                                     "First-frame box (trivial tracker)", "First-frame mask (trivial segmenter)",
                                     "twinmae", "dropmae"]
    models = ["scratch", "demo/random_init", "first_box", "first_mask", "demo/twinmae_ep1", "demo/dropmae_ep1"]
    rows = dict(zip(models, table.itertuples()))
    val_sequences = DemoBenchmarkSettings().val_sequences  # the demo_benchmark rule's val split
    # Every tracking cell is the AO of a metrics.json the evaluate_tracker rule wrote.
    for tracker in [layout.SCRATCH, "demo/random_init", layout.FIRST_BOX, "demo/twinmae_ep1", "demo/dropmae_ep1"]:
        row = rows[tracker]
        metrics = json.loads((demo_dag / layout.TRACKING.paths(layout.TRACKING_METRICS, tracker, "demo")).read_text())
        assert metrics["scored"] and metrics["format"] == "got10k" and metrics["sequences"] == val_sequences
        assert (row.demo_ao, row.demo_sr50, row.demo_sr75) == pytest.approx((metrics["ao"], metrics["sr50"], metrics["sr75"]))
        raw = demo_dag / layout.TRACKING.paths(layout.TRACKING_RAW, tracker, "demo")
        assert len(list(raw.glob("*/*_001.txt"))) == len(list(raw.glob("*/*_time.txt"))) == val_sequences
    # Every segmentation cell is the J&F / J / F of a metrics.json the evaluate_segmenter rule wrote;
    # the scratch row holds the scratch tracker's and the scratch segmenter's scores.
    markdown = (demo_dag / layout.table_markdown("pretraining")).read_text()
    for segmenter in [layout.SCRATCH, "demo/random_init", layout.FIRST_MASK, "demo/twinmae_ep1", "demo/dropmae_ep1"]:
        row = rows[segmenter]
        metrics = json.loads((demo_dag / layout.SEGMENTATION.paths(layout.SEGMENTATION_METRICS, segmenter, "demo"))
                             .read_text())
        assert metrics["scored"] and metrics["format"] == "davis2017" and 0 <= metrics["jf"] <= 1
        assert (row.demo_jf, row.demo_j, row.demo_f) == pytest.approx((metrics["jf"], metrics["j"], metrics["f"]))
        assert f" {metrics['jf'] * 100:.1f} |" in markdown  # in percent, one decimal, as the paper prints
        raw = demo_dag / layout.SEGMENTATION.paths(layout.SEGMENTATION_RAW, segmenter, "demo")
        assert len(list(raw.glob("*/00000.png"))) == metrics["sequences"] == val_sequences
        overlay = demo_dag / layout.SEGMENTATION.paths(layout.SEGMENTATION_OVERLAY, segmenter, "demo")
        assert overlay.stat().st_size > 1000
    for cell in ("demo/random_init", "demo/twinmae_ep1", "demo/dropmae_ep1"):
        probe_path = layout.encoder_of_model(cell).paths(layout.PROBE_METRICS, benchmark="demo")
        probe = json.loads((demo_dag / probe_path).read_text())
        assert rows[cell].demo_probe_jf == pytest.approx(probe["jf"]) and probe["checkpoint_sha256"]
    # The random-init row names the untrained checkpoint its tracker, segmenter and probe started from.
    control = demo_dag / layout.RandomInit("demo").paths(layout.MODEL)
    assert rows["demo/random_init"].checkpoint_sha256 == hashlib.sha256(control.read_bytes()).hexdigest()
    assert rows["demo/random_init"].epochs == 0
    # Each baseline row has only its own task's scores.
    assert pd.isna(rows["first_box"].demo_jf) and pd.isna(rows["first_mask"].demo_ao)
    assert table["demo_probe_jf"].iloc[[0, 2, 3]].isna().all()
    for header in ("demo AO (%)", "demo J&F (%)", "demo J (%)", "demo F (%)", "demo probe J&F (%)"):
        assert header in markdown
    datasources = pd.read_csv(demo_dag / layout.table_csv("datasources"))
    assert datasources[["demo_ao", "demo_jf", "demo_j", "demo_f", "demo_probe_jf"]].notna().all().all()
    for row in table[table["method"].isin(["twinmae", "dropmae"])].itertuples():
        cell = layout.Cell(source=row.source, method=row.method, epochs=int(row.epochs))
        metrics = json.loads((demo_dag / cell.paths(layout.CELL_METRICS)).read_text())
        assert row.heldout_loss == pytest.approx(metrics["heldout_loss"])
        model = demo_dag / cell.paths(layout.MODEL)
        assert row.checkpoint_sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
        assert json.loads(row.params)["asad_p"] == (0.1 if row.method == "dropmae" else 0.0)
    attention = pd.read_csv(demo_dag / layout.table_csv("attention"))
    assert set(attention["method"]) == {"twinmae", "dropmae"}
    assert (attention["within_frame"] + attention["between_frame"]).round(5).eq(1.0).all()


def test_the_dag_draws_the_comparison_figures_and_training_curves(demo_dag):
    """Per benchmark: every table tracker's success and precision curves (CSV, one line per tracker,
    and the two plots) and every segmenter's J&F per sequence; per run: loss.csv and lr.csv."""
    success = pd.read_csv(demo_dag / layout.tracking_curves_outputs("demo")["success"])
    assert success["tracker"].nunique() == 5 and len(success) == 5 * 101
    precision = pd.read_csv(demo_dag / layout.tracking_curves_outputs("demo")["precision"])
    assert precision["threshold"].max() == 50 and precision["precision"].between(0, 1).all()
    for role in ("success_plot", "precision_plot"):
        assert (demo_dag / layout.tracking_curves_outputs("demo")[role]).stat().st_size > 10_000
    per_sequence = pd.read_csv(demo_dag / layout.segmentation_sequences_outputs("demo")["csv"])
    assert per_sequence["segmenter"].nunique() == 5 and per_sequence["jf"].between(0, 1).all()
    for run_dir in ("runs/pretrain/demo/dropmae_ep1", "runs/track/scratch", "runs/segment/demo/twinmae_ep1"):
        loss = pd.read_csv(demo_dag / run_dir / "loss.csv")
        assert list(loss.columns) == ["step", "loss"] and len(loss) > 0 and loss["step"].is_monotonic_increasing


def test_the_report_holds_every_table_and_figure_with_its_caption(demo_dag):
    result = snakemake(demo_dag, "--report", "report.html", configfiles=["tiny.yaml"])
    html = (demo_dag / "report.html").read_text()
    assert "DropMAE workbench: TwinMAE / DropMAE pretraining" in html, result.stderr[-2000:]
    for category in ("1 Training", "2 Analysis", "3 Tracking", "4 Segmentation", "5 Probe", "6 Tables"):
        assert category in html
    curves = layout.tracking_curves_outputs("demo")
    for path in (layout.ATTENTION_PLOT, curves["success_plot"], curves["precision_plot"],
                 layout.segmentation_sequences_outputs("demo")["plot"], layout.table_csv("pretraining"),
                 "results/cells/demo/dropmae_ep1/temporal_matching.png",
                 layout.TRACKING.paths(layout.TRACKING_PLOT, "first_box", "demo"),
                 layout.TRAINING_CURVES_FIGURE.format(kind="segmentation")):
        assert Path(path).name in html, f"{path} is not in the report"
    assert "Success plot on demo" in html and "Precision plot on demo" in html  # the captions


def test_pretraining_went_through_submitit(demo_dag):
    summary = json.loads((demo_dag / "runs/pretrain/demo/dropmae_ep1/run.json").read_text())
    assert summary["executor"] == "local" and summary["status"] == "completed"
    assert (demo_dag / "runs/pretrain/demo/dropmae_ep1/submitit").is_dir()


def test_a_second_run_rebuilds_nothing(demo_dag):
    result = snakemake(demo_dag, "--profile", "profiles/local", "-n", configfiles=["tiny.yaml"])
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_the_epochs_list_reruns_only_the_new_cells(demo_dag):
    write_yaml(demo_dag / "epochs.yaml", {"pretrain": {"epochs": [1, 2]}})
    result = snakemake(demo_dag, "--profile", "profiles/local", "-n", configfiles=["tiny.yaml", "epochs.yaml"])
    jobs = dry_run_jobs(result.stdout)
    assert job_counts(result.stdout) == {"pretrain": 2, "analyse": 2, "finetune_tracker": 2, "evaluate_tracker": 2,
                                         "finetune_segmenter": 2, "evaluate_segmenter": 2, "probe": 2,
                                         "table_pretraining": 1, "table_attention": 1, "all": 1,
                                         # the figures that compare every model, now with the new ones
                                         "training_curves": 3, "tracking_curves": 1, "segmentation_sequences": 1}
    assert {job["output"][0] for job in jobs if job["rule"] == "pretrain"} == {
        "runs/pretrain/demo/twinmae_ep2/model.pth", "runs/pretrain/demo/dropmae_ep2/model.pth"}


def test_changing_a_recipe_value_retrains_but_does_not_reextract(demo_dag):
    write_yaml(demo_dag / "blr.yaml", {"pretrain": {"blr": 0.002}})
    result = snakemake(demo_dag, "--profile", "profiles/local", "-n", configfiles=["tiny.yaml", "blr.yaml"])
    counts = job_counts(result.stdout)
    assert counts["pretrain"] == 2 and counts["analyse"] == 2
    assert counts["finetune_tracker"] == 2 and counts["evaluate_tracker"] == 2  # not the scratch or first-box rows
    assert counts["finetune_segmenter"] == 2 and counts["evaluate_segmenter"] == 2 and counts["probe"] == 2
    assert "extract_frames" not in counts and "demo_videos" not in counts and "demo_benchmark" not in counts


def test_a_rerun_moves_the_old_run_aside_instead_of_resuming_it(demo_dag, tmp_path):
    """A finished checkpoint-last must not be 'resumed' when the DAG retrains a cell."""
    config = load_config([demo_dag / "params.yaml", demo_dag / "tiny.yaml"])
    cell = layout.Cell(source="demo", method="twinmae", epochs=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    last = demo_dag / cell.paths(layout.RUN_DIR) / "checkpoint-last.pth"
    (run_dir / "checkpoint-last.pth").write_bytes(last.read_bytes())
    messages = []
    stages.supersede_stale_run(config, cell, run_dir, messages.append)
    assert not (run_dir / "checkpoint-last.pth").exists()
    archived = list((run_dir / "superseded").glob("*/checkpoint-last.pth"))
    assert len(archived) == 1 and "it had finished" in messages[0]


# ----------------------------------------------------------------------------- bad configurations
@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory) -> Path:
    return copy_repository(tmp_path_factory.mktemp("bad") / "repo")


@pytest.mark.parametrize(
    ("overlay", "named"),
    [
        ({"pretrain": {"epoch": [400]}}, "epoch"),  # unknown key
        ({"pretrain": {"batch_size": "large"}}, "batch_size"),  # wrong type
        ({"launcher": {"pretrain": {"nodes": 1.5}}}, "nodes"),  # wrong type, nested
        ({"pretrain": {"epochs": [400, 0]}}, "pretrain.epochs"),  # epochs <= 0
        ({"pretrain": {"asad_p": 1.0}}, "pretrain.asad_p"),  # P outside [0, 1)
        ({"pretrain": {"asad_p": -0.1}}, "pretrain.asad_p"),
        ({"analysis": {"table_source": "k700"}}, "analysis.table_source"),
    ],
    ids=["unknown-key", "wrong-type", "wrong-type-nested", "epochs-not-positive", "p-too-large", "p-negative",
         "unknown-source"],
)
def test_a_bad_config_stops_the_dry_run_naming_the_key(scratch_repo, overlay, named):
    write_yaml(scratch_repo / "bad.yaml", overlay)
    result = snakemake(scratch_repo, "-n", configfiles=["bad.yaml"], check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert named in output
    assert "Job stats" not in output  # stopped while parsing, before a DAG was built


def test_a_missing_data_path_stops_the_run_before_any_job(scratch_repo):
    write_yaml(scratch_repo / "missing.yaml",
               {"data": {"sources": {"k400": {"videos": "data/not-there"}}}})
    dry = snakemake(scratch_repo, "-n", "results/table_datasources.csv", configfiles=["missing.yaml"])
    assert "data.sources.k400.videos" in dry.stdout + dry.stderr  # a dry run warns and shows the DAG
    result = snakemake(scratch_repo, "--profile", "profiles/local", "results/table_datasources.csv",
                       configfiles=["missing.yaml"], check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "data.sources.k400.videos: data/not-there does not exist" in output
    assert "Finished job" not in output and not (scratch_repo / "logs").exists()


def test_the_slurm_profile_dry_runs_without_slurm(scratch_repo):
    result = snakemake(scratch_repo, "--profile", "slurm", "-n", "results/table_datasources.csv")
    assert job_counts(result.stdout) == {"extract_frames": 1, "pretrain": 1, "analyse": 1, "finetune_tracker": 1,
                                         "evaluate_tracker": 1, "finetune_segmenter": 1, "evaluate_segmenter": 1,
                                         "probe": 1, "table_datasources": 1}


def test_the_pretraining_table_dag_has_the_random_init_control(scratch_repo):
    """The control: an untrained encoder of the table source, fine-tuned, evaluated and probed like a cell."""
    write_yaml(scratch_repo / "downstream.yaml", with_segmentation(with_tracking(TINY_OVERLAY)))
    result = snakemake(scratch_repo, "-n", layout.table_csv("pretraining"), configfiles=["downstream.yaml"])
    counts, jobs = job_counts(result.stdout), dry_run_jobs(result.stdout)
    assert counts["random_init"] == counts["probe_random_init"] == 1
    assert counts["finetune_tracker"] == counts["finetune_segmenter"] == 2 + 2  # the cells, scratch, random init
    control = layout.RandomInit("demo")
    checkpoint = control.paths(layout.MODEL)
    assert next(job for job in jobs if job["rule"] == "random_init")["output"] == [
        checkpoint, control.paths(layout.CELL_METRICS)]
    for task in layout.DOWNSTREAM:
        finetune = next(job for job in jobs if job["output"][0] == task.paths(task.model, control.name))
        assert checkpoint in finetune["input"]  # started from the untrained checkpoint, like a cell from its own
        assert any(task.paths(task.metrics, control.name, "demo") in job["output"] for job in jobs)
    probe = next(job for job in jobs if job["rule"] == "probe_random_init")
    assert checkpoint in probe["input"] and control.paths(layout.PROBE_METRICS, benchmark="demo") in probe["output"]

    write_yaml(scratch_repo / "off.yaml", {"analysis": {"random_init_control": False}})
    off = snakemake(scratch_repo, "-n", layout.table_csv("pretraining"), configfiles=["downstream.yaml", "off.yaml"])
    assert "random_init" not in job_counts(off.stdout) and job_counts(off.stdout)["finetune_tracker"] == 3
    assert not [path for job in dry_run_jobs(off.stdout) for path in job["output"] if layout.RANDOM_INIT in path]


def test_the_random_init_checkpoint_is_a_cells_starting_point_and_loads_like_one(tmp_path, monkeypatch):
    config = load_config([REPO / "params.yaml",
                          write_yaml(tmp_path / "tiny.yaml", with_segmentation(with_tracking(TINY_OVERLAY)))])
    model_path, metrics_path = tmp_path / "model.pth", tmp_path / "metrics.json"
    metrics = stages.random_init_stage(config, layout.RandomInit("demo"), model_path, metrics_path, report=print)
    state = load_checkpoint(model_path)
    assert tuple(state) == stages.PRETRAINED_MODEL_KEYS and state["epoch"] == state["global_step"] == 0
    assert metrics == json.loads(metrics_path.read_text())
    assert metrics["checkpoint_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()

    # The same weights a twinmae cell's training starts from: pretrain() up to its training loop.
    started = {}
    monkeypatch.setattr(pretrain_module, "build_pair_dataset", lambda *args: None)
    monkeypatch.setattr(pretrain_module, "run_training",
                        lambda task, *args, **kwargs: started.update(task.model.state_dict()))
    pretrain_module.pretrain(config, Cell("twinmae", 1, "demo"), tmp_path, tmp_path / "run", device="cpu")
    assert started.keys() == state["model"].keys()
    assert all(torch.equal(started[key], value) for key, value in state["model"].items())

    # Every loader of a pretraining checkpoint takes it unchanged, no encoder weight missing.
    tracker, report = droptrack_from_checkpoint(model_path, **tracker_model_arguments(config))
    assert report.missing == [] and report.unexpected == [] and report.loaded
    assert torch.equal(tracker.state_dict()["patch_embed.proj.weight"], state["model"]["patch_embed.proj.weight"])
    _, report = dropseg_from_checkpoint(model_path, **segmenter_model_arguments(config))
    assert report.missing == [] and report.unexpected == []
    frame_encoder_from_checkpoint(model_path)  # the probe's loader: raises on a missing encoder weight
    load_pretrained(model_path)  # analyse's loader: a strict load of the whole model


def _write_json(path: str, values: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(values))


def test_the_pretraining_table_has_the_random_init_row(tmp_path, monkeypatch):
    """Built from fixture result files: the control row sits beside no pre-training, with its own scores."""
    monkeypatch.chdir(tmp_path)
    overlay = write_yaml(tmp_path / "tiny.yaml", with_segmentation(with_tracking(TINY_OVERLAY)))
    config = load_config([REPO / "params.yaml", overlay])
    control = layout.RandomInit("demo")
    cells = layout.table_cells(config, "pretraining")
    for rank, cell in enumerate(cells):
        _write_json(cell.paths(layout.CELL_METRICS), {
            **{column: 0.5 for column in tables.CELL_COLUMNS}, "source": cell.source, "method": cell.method,
            "epochs": cell.epochs, "global_step": 10, "heldout_pairs": 2, "checkpoint": cell.paths(layout.MODEL),
            "checkpoint_sha256": f"{rank}" * 64, "params": {"seed": 0}})
    _write_json(control.paths(layout.CELL_METRICS), {
        "source": "demo", "method": layout.RANDOM_INIT, "epochs": 0, "global_step": 0,
        "checkpoint": control.paths(layout.MODEL), "checkpoint_sha256": "c" * 64, "params": {"seed": 0}})
    models = [layout.SCRATCH, control.name, *(cell.name for cell in cells)]
    score = {name: 0.1 * (rank + 1) for rank, name in enumerate(models)}  # a distinct score per model
    for name in models + [layout.FIRST_BOX]:
        _write_json(layout.TRACKING.paths(layout.TRACKING_METRICS, name, "demo"),
                    {"scored": True, "format": "got10k", "ao": score.get(name, 0.01), "sr50": 0.2, "sr75": 0.1})
    for name in models + [layout.FIRST_MASK]:
        _write_json(layout.SEGMENTATION.paths(layout.SEGMENTATION_METRICS, name, "demo"),
                    {"scored": True, "format": "davis2017", "jf": score.get(name, 0.02) / 2, "j": 0.1, "f": 0.1})
    for encoder in [control, *cells]:
        _write_json(encoder.paths(layout.PROBE_METRICS, benchmark="demo"),
                    {"scored": True, "format": "davis2017", "jf": score[encoder.name] / 4})

    frame = tables.table_pretraining(config, "table.csv", "table.md")
    assert list(frame["method"]) == ["No pre-training", "Random init (never trained)",
                                     "First-frame box (trivial tracker)", "First-frame mask (trivial segmenter)",
                                     "twinmae", "dropmae"]
    row = pd.read_csv("table.csv").iloc[1]
    expected = score[control.name]
    assert (row.demo_ao, row.demo_jf, row.demo_probe_jf) == pytest.approx((expected, expected / 2, expected / 4))
    assert (row.source, row.epochs, row.global_step) == ("demo", 0, 0)
    assert (row.checkpoint, row.checkpoint_sha256) == (control.paths(layout.MODEL), "c" * 64)
    markdown = Path("table.md").read_text()
    control_line = next(line for line in markdown.splitlines() if "| Random init (never trained)" in line)
    assert "cccccccccccc" in control_line and f" {expected / 4 * 100:.1f} |" in control_line  # probe J&F in percent
    assert tables.CONTROL_NOTE in markdown
    # Rounded as the paper prints: AO / J&F one decimal in percent, losses and shares three; the CSV keeps all.
    twinmae_line = next(line for line in markdown.splitlines() if "| TwinMAE " in line)
    ao = score["demo/twinmae_ep1"] * 100
    assert f" {ao:.1f} |" in twinmae_line and " 0.500 |" in twinmae_line and "0.5000" not in markdown
    assert pd.read_csv("table.csv").set_index("method").loc["twinmae", "demo_ao"] == pytest.approx(ao / 100, abs=0)

    off = load_config([REPO / "params.yaml", overlay], ["analysis.random_init_control=false"])
    frame = tables.table_pretraining(off, "off.csv", "off.md")
    assert "Random init (never trained)" not in set(frame["method"]) and len(frame) == 5


def test_snakemake_lint_is_clean(scratch_repo):
    result = snakemake(scratch_repo, "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_the_committed_schema_is_generated_from_the_typed_config():
    committed = json.loads((REPO / "rules/schemas/params.schema.json").read_text())
    assert committed == json_schema(), "regenerate with: dropmae schema > rules/schemas/params.schema.json"


# ----------------------------------------------------------------------------- DVC
def _dvc_stages(repo: Path) -> dict[str, dict]:
    """Every expanded dvc.yaml stage: outs, deps and params, as paths relative to the repository."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        found = {}
        for stage in dvc_repo.index.stages:
            params = [key for dep in stage.deps if hasattr(dep, "params") for key in dep.params]
            found[stage.name] = {
                "outs": sorted(str(Path(out.fs_path).relative_to(repo)) for out in stage.outs),
                "deps": sorted(str(Path(dep.fs_path).relative_to(repo)) for dep in stage.deps
                               if not hasattr(dep, "params")),
                "params": sorted(params),
            }
    return found


def _covers(parent: str, path: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


@pytest.fixture(scope="module")
def agreement_repo(tmp_path_factory, demo_tree) -> Path:
    """Two sources (the demo tree and a plain video folder), both methods, two epoch budgets."""
    repo = copy_repository(tmp_path_factory.mktemp("agree") / "repo")
    seed_demo_videos(repo, demo_tree)
    (repo / "clips").symlink_to(demo_tree, target_is_directory=True)
    overlay = with_segmentation(with_tracking(TINY_OVERLAY))
    overlay["data"]["sources"]["clips"] = {"videos": "clips"}
    overlay["pretrain"]["epochs"] = [1, 2]
    merged = config_to_dict(load_config([repo / "params.yaml", write_yaml(repo / "overlay.yaml", overlay)]))
    write_yaml(repo / "params.yaml", merged)  # DVC reads params.yaml only
    run(["dvc", "init", "--no-scm", "-q"], repo)
    return repo


def test_snakemake_and_dvc_declare_the_same_stages(agreement_repo):
    dvc = _dvc_stages(agreement_repo)
    # Snakemake targets files: a frames folder by its manifest, the demo benchmark by its summary.
    marker = {"data/frames": "/manifest.csv", "data/demo-benchmark": "/summary.json"}
    targets = sorted({out + next((m for prefix, m in marker.items() if out.startswith(prefix)), "")
                      for stage in dvc.values() for out in stage["outs"]})
    jobs = dry_run_jobs(snakemake(agreement_repo, *targets, "-n", "--forceall").stdout)
    sources, cells = 2, 2 * 2 * 2  # sources x methods x epochs
    controls = sources  # a random-init encoder per source
    # videos, frames, pretrain + analyse per cell, 3 tables; demo benchmark, a tracker and a segmenter
    # per cell, per random init and from scratch, each evaluated on the demo benchmark, plus the
    # first-frame-box and first-frame-mask baselines; the probe per cell and per random init; the
    # attention study (studies/dvc.yaml); the tracking curves and the per-sequence J&F of the benchmark.
    assert len(dvc) == len(jobs) == (1 + 2 + 2 * cells + controls + 3 + 1
                                     + 2 * ((cells + controls + 1) + (cells + controls + 2)) + cells + controls + 1
                                     + 2)
    # DVC needs one stage per kind of input; Snakemake has one rule with an input function.
    rule_of = {"finetune_tracker_scratch": "finetune_tracker", "evaluate_tracker_scratch": "evaluate_tracker",
               "evaluate_first_box": "evaluate_tracker", "finetune_segmenter_scratch": "finetune_segmenter",
               "evaluate_segmenter_scratch": "evaluate_segmenter", "evaluate_first_mask": "evaluate_segmenter",
               "finetune_tracker_random_init": "finetune_tracker", "evaluate_tracker_random_init": "evaluate_tracker",
               "finetune_segmenter_random_init": "finetune_segmenter",
               "evaluate_segmenter_random_init": "evaluate_segmenter"}
    for name, stage in dvc.items():
        rule = rule_of.get(name.split("@")[0], name.split("@")[0])
        matching = [job for job in jobs if job["rule"] == rule
                    and all(any(_covers(out, path) for out in stage["outs"]) for path in job["output"])]
        assert len(matching) == 1, f"no Snakemake job of rule {rule} writes the outs of {name}"
        job = matching[0]
        for out in stage["outs"]:
            assert any(_covers(out, path) for path in job["output"]), f"{name}: {out} is not written by Snakemake"
        for path in job["input"]:
            assert any(_covers(dep, path) for dep in stage["deps"]), f"{name}: Snakemake input {path} is not a DVC dep"
        for dep in stage["deps"]:
            if dep.startswith("dropmae/"):
                continue  # code: DVC reruns on code changes, Snakemake on rule and script changes
            assert any(_covers(dep, path) for path in job["input"]), f"{name}: DVC dep {dep} is not a Snakemake input"


def test_dvc_params_are_what_the_rules_rerun_on(agreement_repo):
    dvc = _dvc_stages(agreement_repo)
    config = load_config([agreement_repo / "params.yaml"])
    signature = stages.run_signature(config, layout.Cell(source="demo", method="dropmae", epochs=1))
    expected_pretrain = ["model"] + [f"pretrain.{key}" for key in signature["pretrain"]]
    assert dvc["pretrain@demo-dropmae-1"]["params"] == sorted(expected_pretrain)
    # data.extraction.pack: not in a run's signature (a pack holds the frames' bytes), but it adds the pack.
    extraction = [*signature["extraction"], "pack"]
    assert dvc["extract_frames@demo"]["params"] == sorted(f"data.extraction.{k}" for k in extraction)
    assert dvc["analyse@demo-dropmae-1"]["params"] == sorted(f"analysis.{k}" for k in stages.ANALYSIS_KEYS)
    tracking = stages.tracker_signature(config, "demo/dropmae_ep1")
    expected_tracking = ["tracking.benchmarks"] + [f"tracking.{k}" for k in tracking if k != "train_data"]
    assert dvc["finetune_tracker@demo-dropmae-1"]["params"] == sorted(expected_tracking)
    assert dvc["finetune_tracker_scratch"]["params"] == sorted(expected_tracking + ["model.encoder", "model.patch_size"])
    assert dvc["finetune_tracker_random_init@clips"]["params"] == sorted(expected_tracking)
    assert stages.random_init_signature(config).keys() == {"model", "seed"}
    assert dvc["random_init@demo"]["params"] == ["model", "pretrain.seed"]
    segmentation = stages.segmenter_signature(config, "demo/dropmae_ep1")
    expected_segmentation = ["segmentation.benchmarks"] + [
        f"segmentation.{k}" for k in segmentation if k != "train_data"]
    assert dvc["finetune_segmenter@demo-dropmae-1"]["params"] == sorted(expected_segmentation)
    assert dvc["finetune_segmenter_scratch"]["params"] == sorted(expected_segmentation + ["model.encoder",
                                                                                           "model.patch_size"])
    evaluate = ["segmentation.benchmarks", "segmentation.evaluate"] + [
        f"segmentation.{k}" for k in stages.SEGMENTATION_TEST_KEYS]
    assert dvc["evaluate_segmenter@demo-dropmae-1-demo"]["params"] == sorted(evaluate)
    assert dvc["evaluate_first_mask@demo"]["params"] == sorted(evaluate)
    assert dvc["probe@demo-dropmae-1-demo"]["params"] == ["segmentation.benchmarks", "segmentation.evaluate",
                                                          "segmentation.probe"]
    assert dvc["probe_random_init@clips-demo"]["params"] == dvc["probe@demo-dropmae-1-demo"]["params"]
    assert dvc["evaluate_segmenter_random_init@demo-demo"]["params"] == sorted(evaluate)


# ----------------------------------------------------------------------------- DVC code dependencies
# What each command of a dvc.yaml stage runs: the functions cli.py hands the command to.
STAGE_ENTRY_POINTS = {
    "stage demo-videos": ["dropmae.workflow.stages.build_demo_videos"],
    "stage extract-frames": ["dropmae.workflow.stages.extract_source"],
    "stage random-init": ["dropmae.workflow.stages.random_init_stage"],
    "stage pretrain": ["dropmae.workflow.stages.pretrain_cell", "dropmae.workflow.stages.pretrain_data_path"],
    "stage analyse": ["dropmae.workflow.stages.analyse_cell"],
    "stage table": ["dropmae.workflow.tables.build_table"],
    "stage demo-benchmark": ["dropmae.workflow.stages.build_demo_benchmark_stage"],
    "stage finetune-tracker": ["dropmae.workflow.stages.finetune_tracker_stage"],
    "stage evaluate-tracker": ["dropmae.workflow.stages.evaluate_tracker_stage"],
    "stage finetune-segmenter": ["dropmae.workflow.stages.finetune_segmenter_stage"],
    "stage evaluate-segmenter": ["dropmae.workflow.stages.evaluate_segmenter_stage"],
    "stage probe": ["dropmae.workflow.stages.probe_stage"],
    "stage tracking-curves": ["dropmae.workflow.stages.tracking_curves_stage"],
    "stage segmentation-sequences": ["dropmae.workflow.stages.segmentation_sequences_stage"],
    "attention-study": ["dropmae.analysis.attention_study.run_attention_study"],
}


def _module_file(module: str) -> Path | None:
    """The file of a dotted dropmae module (a package: its __init__.py); None when there is none."""
    path = REPO.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _parsed(module: str) -> tuple[dict[str, ast.AST], dict[str, tuple[str, str | None]], list[ast.stmt]]:
    """A module's top-level functions and classes, the names its top-level imports bind (name ->
    (module, name in it), or (module, None) for a module), and its other top-level statements."""
    tree = ast.parse(_module_file(module).read_text())
    definitions = {node.name: node for node in tree.body
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    bound = dict(_bindings(tree.body))
    others = [node for node in tree.body if not isinstance(node, (ast.Import, ast.ImportFrom, *map(type, definitions.values())))]
    return definitions, bound, others


def _bindings(statements) -> list[tuple[str, tuple[str, str | None]]]:
    """(bound name, (dropmae module, name in it or None)) of the import statements among ``statements``."""
    found = []
    for node in statements:
        if isinstance(node, ast.Import):
            found += [(alias.asname or alias.name.split(".")[0], (alias.name, None)) for alias in node.names
                      if alias.name.split(".")[0] == "dropmae"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "dropmae":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                target = (submodule, None) if _module_file(submodule) else (node.module, alias.name)
                found.append((alias.asname or alias.name, target))
    return found


def _entry_point_code(entry: str) -> set[Path]:
    """The dropmae files whose code one function runs, found with `ast`: a function or class counts
    with its module's file and the top-level statements there (constants), and adds what its body
    names: the module's other functions and classes, names from the module's top-level imports and
    from its own function-local imports, attributes of imported modules; transitively. What an
    import merely defines and never runs is left out (the other functions of a module, the
    re-exports of the packages' __init__.py)."""
    module, function = entry.rsplit(".", 1)
    files, seen, todo = set(), set(), [(module, function)]
    while todo:
        unit = todo.pop()
        if unit in seen:
            continue
        seen.add(unit)
        module, name = unit
        if _module_file(module) is None:
            continue
        if name is None:  # the module's file and what its top-level statements (constants) name
            files.add(_module_file(module))
            definitions, bound, others = _parsed(module)
            nodes = others
        else:
            todo.append((module, None))
            definitions, bound, _ = _parsed(module)
            if name not in definitions:
                if name in bound:  # a re-exported name
                    todo.append(bound[name])
                continue
            nodes = [definitions[name]]
        for node in nodes:
            local = dict(_bindings([item for item in ast.walk(node) if isinstance(item, (ast.Import, ast.ImportFrom))]))
            todo += [target if target[1] is not None else (target[0], None) for target in local.values()]
            scope = {**bound, **local}
            for item in ast.walk(node):
                if isinstance(item, ast.Name):
                    if item.id in scope:
                        todo.append(scope[item.id])
                    elif item.id in definitions:
                        todo.append((module, item.id))
                elif isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) \
                        and scope.get(item.value.id, (None, "")) [1] is None and item.value.id in scope:
                    todo.append((scope[item.value.id][0], item.attr))
    return files


def _stage_subcommands() -> set[str]:
    from dropmae.cli import build_parser

    def subcommands(parser: argparse.ArgumentParser) -> dict:
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    return set(subcommands(subcommands(build_parser())["stage"]))


def test_the_stage_entry_points_are_what_the_cli_dispatches_to():
    """STAGE_ENTRY_POINTS names every `dropmae stage` subcommand and every function of the
    workflow modules that cli.py's stage handlers call."""
    assert {key.removeprefix("stage ") for key in STAGE_ENTRY_POINTS if key.startswith("stage ")} == _stage_subcommands()
    cli = ast.parse((REPO / "dropmae" / "cli.py").read_text())
    handlers = {node.name: node for node in cli.body if isinstance(node, ast.FunctionDef)}
    called = {f"dropmae.workflow.{item.value.id}.{item.attr}"
              for name in ("cmd_stage", "_downstream_stage", "_probe_stage") for item in ast.walk(handlers[name])
              if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name)
              and item.value.id in ("stages", "tables") and not item.attr.isupper()}
    expected = {entry for key, entries in STAGE_ENTRY_POINTS.items() if key.startswith("stage ") for entry in entries}
    assert called == expected
    study = {alias.name for item in ast.walk(handlers["cmd_attention_study"]) if isinstance(item, ast.ImportFrom)
             and item.module == "dropmae.analysis.attention_study" for alias in item.names}
    assert "run_attention_study" in study


@pytest.mark.parametrize("dvc_file", ["dvc.yaml", "studies/dvc.yaml"])
def test_dvc_code_deps_cover_the_code_each_stage_runs(dvc_file):
    """Each dvc.yaml stage that runs `dropmae stage <name>` (or `dropmae attention-study`) lists,
    as deps, every file of dropmae/ that its command runs (a folder covers the files under it), so a
    code change reruns exactly the stages it can change.

    Derived per stage from the imports, with `ast` (see _entry_point_code): from the function of
    dropmae/workflow/stages.py (or tables.py, attention_study.py) that cli.py dispatches to (see
    STAGE_ENTRY_POINTS, checked against cli.py above), through the functions and classes it names
    and the imports, top-level and function-local, inside dropmae/: per function, so a module
    counts when a stage runs code of it, not because something it imports imports it. cli.py itself
    is left out: it reads params.yaml (whose values are the stages' params) and names paths (the
    stages' outs) and computes nothing.
    """
    stages_of = yaml.safe_load((REPO / dvc_file).read_text())["stages"]
    checked, missing = 0, {}
    for name, stage in stages_of.items():
        body = stage.get("do", stage)
        words = " ".join(body["cmd"].split()).split()
        if words[:1] != ["dropmae"]:
            continue
        command = " ".join(words[1:3] if words[1] == "stage" else words[1:2])
        assert command in STAGE_ENTRY_POINTS, f"{dvc_file} {name}: no entry point known for `dropmae {command}`"
        deps = [dep for dep in body.get("deps", []) if dep.startswith("dropmae")]
        code = set().union(*(_entry_point_code(entry) for entry in STAGE_ENTRY_POINTS[command]))
        for path in sorted(str(path.relative_to(REPO)) for path in code):
            if not any(_covers(dep, path) for dep in deps):
                missing.setdefault(name, []).append(path)
        checked += 1
    assert checked > 0
    assert not missing, f"{dvc_file}: code a stage runs but does not list as a dep: {missing}"


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, demo_tree) -> Path:
    """A git + DVC repository of the workflow with the tiny configuration as its params.yaml."""
    repo = copy_repository(tmp_path_factory.mktemp("dvc") / "repo")
    overlay = write_yaml(repo / "tiny.yaml", with_segmentation(with_tracking(TINY_OVERLAY)))
    merged = config_to_dict(load_config([repo / "params.yaml", overlay]))
    write_yaml(repo / "params.yaml", merged)
    git = ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci"]
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run([*git, "add", "-A"], repo)
    run([*git, "commit", "-qm", "workflow"], repo)
    return repo


def test_dvc_repro_metrics_plots_and_experiments(dvc_repo):
    # DVC runs its 32 stages here one after another, a fresh process each, on a shared machine.
    repro = run(["dvc", "repro"], dvc_repo, timeout=2700)
    assert "Running stage 'pretrain@demo-dropmae-1'" in repro.stdout
    assert (dvc_repo / layout.table_csv("datasources")).is_file()
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], dvc_repo).stdout

    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], dvc_repo).stdout)
    files = next(iter(metrics.values()))["data"]
    cell = files["results/cells/demo/dropmae_ep1/metrics.json"]["data"]
    assert cell["method"] == "dropmae" and cell["heldout_loss"] > 0
    tracking = files["results/tracking/demo/dropmae_ep1/demo/metrics.json"]["data"]
    assert 0 <= tracking["ao"] <= 1 and tracking["scored"]
    for path in ("results/segmentation/demo/dropmae_ep1/demo/metrics.json",
                 "results/segmentation/first_mask/demo/metrics.json",
                 "results/probe/demo/dropmae_ep1/demo/metrics.json"):
        segmentation = files[path]["data"]
        assert 0 <= segmentation["jf"] <= 1 and segmentation["scored"]
    table = pd.read_csv(dvc_repo / layout.table_csv("pretraining"))
    assert table[["demo_jf", "demo_j", "demo_f"]].notna().sum().tolist() == [5, 5, 5]  # not the first-frame-box row
    plots = run(["dvc", "plots", "show", "--json"], dvc_repo)
    assert "results/attention_layers.csv" in plots.stdout
    assert "results/segmentation/demo/dropmae_ep1/demo/overlays.png" in plots.stdout
    assert "results/probe/demo/dropmae_ep1/demo/overlays.png" in plots.stdout

    git = ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci"]
    run([*git, "add", "-A"], dvc_repo)
    run([*git, "commit", "-qm", "first run"], dvc_repo)
    experiment = run(["dvc", "exp", "run", "-S", "pretrain.epochs=[1,2]"], dvc_repo, timeout=2700)
    ran = {line.split("'")[1] for line in experiment.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"pretrain@demo-twinmae-2", "pretrain@demo-dropmae-2", "analyse@demo-twinmae-2",
                   "analyse@demo-dropmae-2", "finetune_tracker@demo-twinmae-2", "finetune_tracker@demo-dropmae-2",
                   "evaluate_tracker@demo-twinmae-2-demo", "evaluate_tracker@demo-dropmae-2-demo",
                   "finetune_segmenter@demo-twinmae-2", "finetune_segmenter@demo-dropmae-2",
                   "evaluate_segmenter@demo-twinmae-2-demo", "evaluate_segmenter@demo-dropmae-2-demo",
                   "probe@demo-twinmae-2-demo", "probe@demo-dropmae-2-demo",
                   "table_pretraining", "table_datasources", "table_attention",
                   # the figures that compare every model on a benchmark are redrawn with the new ones
                   "tracking_curves@demo", "segmentation_sequences@demo"}
