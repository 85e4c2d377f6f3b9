"""External pretrained encoders as rows of the pretraining table: the import stage, the table row,
and (slow) the Snakemake DAG that fine-tunes, evaluates and probes them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from dropmae.config import ConfigError, check_data_paths, load_config
from dropmae.engine.checkpoint import load_checkpoint
from dropmae.segmentation.model import dropseg_from_checkpoint
from dropmae.segmentation.probe import frame_encoder_from_checkpoint
from dropmae.segmentation.train import segmenter_model_arguments
from dropmae.tracking.model import droptrack_from_checkpoint
from dropmae.tracking.train import tracker_model_arguments
from dropmae.workflow import layout, stages, tables
from test_external import micro_dropmae, save_authors_snapshot
from workflow_support import (
    REPO,
    TINY_OVERLAY,
    copy_repository,
    dry_run_jobs,
    job_counts,
    seed_demo_videos,
    snakemake,
    with_segmentation,
    with_tracking,
    write_yaml,
)

LABEL = "DropMAE micro (authors' layout, made by the tests)"


def external_overlay(path: str) -> dict:
    overlay = with_segmentation(with_tracking(TINY_OVERLAY))
    overlay["external_encoders"] = {"authors": {"path": path, "format": "mae_snapshot", "label": LABEL}}
    return overlay


def _write_json(path: str, values: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(values))


def test_import_stage_writes_a_cell_checkpoint_and_the_table_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    original = micro_dropmae()
    save_authors_snapshot(original, tmp_path / "authors.pth")
    config = load_config([REPO / "params.yaml", write_yaml(tmp_path / "o.yaml", external_overlay("authors.pth"))])
    encoder = layout.ExternalEncoder("authors")
    assert layout.encoder_of_model("external/authors") == encoder
    assert encoder.paths(layout.MODEL) == "runs/pretrain/external/authors/model.pth"
    metrics = stages.import_external_stage(config, encoder, encoder.paths(layout.MODEL),
                                           encoder.paths(layout.CELL_METRICS))
    assert metrics["checkpoint_sha256"] == hashlib.sha256((tmp_path / "authors.pth").read_bytes()).hexdigest()
    assert metrics["label"] == LABEL and metrics["format"] == "mae_snapshot" and metrics["sincos_positions"]
    # Every downstream loader takes the converted file as a cell's model.pth.
    model_path = encoder.paths(layout.MODEL)
    tracker, report = droptrack_from_checkpoint(model_path, **tracker_model_arguments(config))
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(tracker.frame_embed.detach(), original.frame_embed.detach())
    _, report = dropseg_from_checkpoint(model_path, **segmenter_model_arguments(config))
    assert report.missing == []
    frame_encoder_from_checkpoint(model_path)
    assert load_checkpoint(model_path)["external"]["source_sha256"] == metrics["checkpoint_sha256"]

    # The table row, from fixture scores: label, the file's sha256, its own tracker / segmenter / probe scores.
    for rank, cell in enumerate(layout.table_cells(config, "pretraining")):
        _write_json(cell.paths(layout.CELL_METRICS), {
            **{column: 0.5 for column in tables.CELL_COLUMNS}, "source": cell.source, "method": cell.method,
            "epochs": cell.epochs, "global_step": 10, "heldout_pairs": 2, "checkpoint": "m.pth",
            "checkpoint_sha256": f"{rank}" * 64, "params": {"seed": 0}})
    stages.random_init_stage(config, layout.RandomInit("demo"), layout.RandomInit("demo").paths(layout.MODEL),
                             layout.RandomInit("demo").paths(layout.CELL_METRICS), report=print)
    for task in layout.DOWNSTREAM:
        for rank, name in enumerate(task.table_models(config, "pretraining")):
            _write_json(task.paths(task.metrics, name, "demo"),
                        {"scored": True, "format": "got10k" if task is layout.TRACKING else "davis2017",
                         "ao": 0.3 + rank / 100, "sr50": 0.2, "sr75": 0.1, "jf": 0.4 + rank / 100, "j": 0.1, "f": 0.1})
    for probed in layout.table_probe_encoders(config, "pretraining"):
        _write_json(probed.paths(layout.PROBE_METRICS, benchmark="demo"), {"scored": True, "jf": 0.25})
    frame = tables.table_pretraining(config, "table.csv", "table.md")
    row = frame[frame["method"] == LABEL].iloc[0]
    assert (row.source, row.checkpoint, row.checkpoint_sha256) == ("external", "authors.pth",
                                                                   metrics["checkpoint_sha256"])
    expected_ao = json.loads(Path(layout.TRACKING.paths(layout.TRACKING_METRICS, encoder.name, "demo")).read_text())["ao"]
    assert row.demo_ao == pytest.approx(expected_ao) and row.demo_probe_jf == pytest.approx(0.25)
    markdown = Path("table.md").read_text()
    assert LABEL in markdown and metrics["checkpoint_sha256"][:12] in markdown and tables.EXTERNAL_NOTE in markdown


def test_a_missing_external_file_is_named_before_any_job(tmp_path):
    config = load_config([REPO / "params.yaml", write_yaml(tmp_path / "o.yaml", external_overlay("nowhere.pth"))])
    with pytest.raises(ConfigError, match=r"external_encoders.authors.path: nowhere.pth is not a file"):
        check_data_paths(config, root=tmp_path)


@pytest.mark.slow
def test_the_dag_fine_tunes_evaluates_and_probes_an_external_encoder(tmp_path, demo_tree):
    repo = copy_repository(tmp_path / "repo")
    seed_demo_videos(repo, demo_tree)
    save_authors_snapshot(micro_dropmae(), repo / "authors.pth")
    write_yaml(repo / "external.yaml", external_overlay("authors.pth"))
    dry = snakemake(repo, "-n", layout.table_csv("pretraining"), configfiles=["external.yaml"])
    counts, jobs = job_counts(dry.stdout), dry_run_jobs(dry.stdout)
    assert counts["import_external"] == counts["probe_external"] == 1
    assert counts["finetune_tracker"] == counts["finetune_segmenter"] == 2 + 2 + 1  # cells, scratch, control, external
    encoder = layout.ExternalEncoder("authors")
    converted = encoder.paths(layout.MODEL)
    assert next(job for job in jobs if job["rule"] == "import_external")["input"] == ["authors.pth"]
    for task in layout.DOWNSTREAM:
        finetune = next(job for job in jobs if job["output"][0] == task.paths(task.model, encoder.name))
        assert converted in finetune["input"]

    # The external row's jobs run for real (the cells' pretraining is the demo DAG's test).
    targets = [layout.TRACKING.paths(layout.TRACKING_METRICS, encoder.name, "demo"),
               layout.SEGMENTATION.paths(layout.SEGMENTATION_METRICS, encoder.name, "demo"),
               encoder.paths(layout.PROBE_METRICS, benchmark="demo")]
    snakemake(repo, "--profile", "profiles/local", "--cores", "2", *targets, configfiles=["external.yaml"])
    for target in targets:
        metrics = json.loads((repo / target).read_text())
        assert metrics["scored"]
    probe = json.loads((repo / targets[2]).read_text())
    assert probe["checkpoint_sha256"] == hashlib.sha256((repo / converted).read_bytes()).hexdigest()

    # A missing file stops a real run before any job, naming the key.
    (repo / "authors.pth").unlink()
    result = snakemake(repo, "--profile", "profiles/local", "--cores", "1", "--forceall", targets[0],
                       configfiles=["external.yaml"], check=False)
    assert result.returncode != 0 and "external_encoders.authors.path" in result.stdout + result.stderr
    assert (repo / "logs" / "import_external" / "authors.log").read_text().count("rule import_external {") == 1


def test_a_timm_encoders_learned_table_is_interpolated_by_the_probe(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=96, depth=4, num_heads=3, img_size=32,
                            patch_size=8, num_classes=0)
    save_file(vit.state_dict(), "vit.safetensors")
    overlay = with_segmentation(with_tracking(TINY_OVERLAY))
    overlay["external_encoders"] = {"vit": {"path": "vit.safetensors", "format": "timm", "label": "timm ViT"}}
    config = load_config([REPO / "params.yaml", write_yaml(tmp_path / "o.yaml", overlay)])
    encoder = layout.ExternalEncoder("vit")
    metrics = stages.import_external_stage(config, encoder, encoder.paths(layout.MODEL),
                                           encoder.paths(layout.CELL_METRICS))
    assert not metrics["sincos_positions"]  # a learned table: the probe stage interpolates it
    assert any("zeros" in line for line in metrics["load_report"]["conversions"])
    with pytest.raises(ValueError, match="positions='interpolate'"):
        frame_encoder_from_checkpoint(encoder.paths(layout.MODEL))
    probe = frame_encoder_from_checkpoint(encoder.paths(layout.MODEL), positions="interpolate")
    assert torch.equal(probe.training_pos_embed, vit.pos_embed.detach()[0, 1:])
