# Configuration checks and helpers shared by every rule. A bad params.yaml stops here, at parse
# time, before any job is submitted: first the JSON Schema (unknown keys, wrong types), then the
# package's typed config (ranges and cross-key rules). Missing data paths stop the run in onstart
# (a dry run only warns, so the DAG can be inspected before the data is in place).
import dataclasses
import os
import json

from snakemake.utils import validate

from dropmae.config import ConfigError, apply_whole_replacements, check_data_paths, config_from_dict
from dropmae.workflow import layout, stages


# Snakemake merges --configfile overlays key by key; an overlay's data.sources replaces the base's.
apply_whole_replacements(config, workflow.overwrite_configfiles)
validate(config, "schemas/params.schema.json")
try:
    PARAMS = config_from_dict(config)
except ConfigError as error:
    raise ValueError(f"invalid configuration (params.yaml and overlays): {error}") from None

SOURCES = list(PARAMS.data.sources)
FRAMES_MANIFEST = layout.frames_manifest(PARAMS)
TABLE_OUTPUTS = [layout.table_csv(t) for t in layout.TABLES] + [
    layout.table_markdown(t) for t in layout.TABLES
]


# A tracker: a pretraining cell it starts from, or scratch / first_box (see layout).
CELL_PATTERN = "(" + "|".join(SOURCES) + r")/(twinmae|dropmae)_ep[1-9]\d*"
TRAINED_TRACKER_PATTERN = f"{layout.SCRATCH}|{CELL_PATTERN}"


wildcard_constraints:
    source="|".join(SOURCES),
    method="twinmae|dropmae",
    epochs=r"[1-9]\d*",
    table="|".join(layout.TABLES),
    tracker=f"{layout.FIRST_BOX}|{TRAINED_TRACKER_PATTERN}",
    benchmark="|".join(PARAMS.tracking.evaluate) or "none",


onstart:
    try:
        check_data_paths(PARAMS)
    except ConfigError as error:
        raise ValueError(f"invalid configuration: {error}") from None


def source_videos(wildcards):
    """The source's videos as an input: a rule's output for the demo tree, else a path on disk."""
    videos = PARAMS.data.sources[wildcards.source].videos
    if videos == layout.demo_videos() or os.path.exists(videos):
        return videos
    print(f"warning: data.sources.{wildcards.source}.videos = {videos} does not exist (a real run stops)")
    return []


def job_resources(name):
    """Snakemake resources of one kind of job, from params.yaml launcher.<name>."""
    launcher, job = PARAMS.launcher, getattr(PARAMS.launcher, name)
    resources = dict(
        mem_mb=int(job.mem_gb * 1024),
        runtime=job.time_min,
        cpus_per_task=job.cpus,
    )
    if job.partition:
        resources["slurm_partition"] = job.partition
    if launcher.account:
        resources["slurm_account"] = launcher.account
    if launcher.constraint:
        resources["constraint"] = launcher.constraint
    if job.gpus:
        resources["gpu"] = job.gpus
    return resources


def as_json(value):
    """A params value Snakemake can compare between runs (rerun when it changes)."""
    # default=asdict: typed config sections, also inside mappings (tracking.benchmarks entries).
    return json.dumps(value, sort_keys=True, default=dataclasses.asdict)


def cell_of(wildcards):
    return layout.Cell(wildcards.source, wildcards.method, int(wildcards.epochs))


def cell_results(table, template):
    """One result file per cell of a table."""
    return [cell.paths(template) for cell in layout.table_cells(PARAMS, table)]


def tracking_benchmark_inputs(names):
    """The demo benchmark's summary when one of these benchmarks is the one the DAG builds."""
    roots = [PARAMS.tracking.benchmarks[name].root for name in names]
    if any(root.startswith(layout.DEMO_TRACKING_BENCHMARK) for root in roots):
        return {"benchmark": layout.DEMO_BENCHMARK_SUMMARY}
    return {}


def finetune_inputs(wildcards):
    inputs = tracking_benchmark_inputs(PARAMS.tracking.train)
    cell = layout.cell_of_tracker(wildcards.tracker)
    if cell is not None:
        inputs["pretrained"] = cell.paths(layout.MODEL)
    return inputs


def evaluate_inputs(wildcards):
    inputs = tracking_benchmark_inputs([wildcards.benchmark])
    if wildcards.tracker != layout.FIRST_BOX:
        inputs["model"] = layout.tracker_paths(layout.TRACKER_MODEL, wildcards.tracker)
    return inputs


def table_inputs(table):
    """Per-cell metrics, plus each tracker's scores when tracking is configured."""
    inputs = {"metrics": cell_results(table, layout.CELL_METRICS)}
    tracking = layout.tracking_results(PARAMS, table)
    if tracking:
        inputs["tracking"] = tracking
    return inputs
