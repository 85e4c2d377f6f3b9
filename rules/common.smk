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
from dropmae.workflow.smk import probed_encoder_of


# Snakemake merges --configfile overlays key by key; an overlay's data.sources replaces the base's.
apply_whole_replacements(config, workflow.overwrite_configfiles)
validate(config, "schemas/params.schema.json")
try:
    PARAMS = config_from_dict(config)
except ConfigError as error:
    raise ValueError(f"invalid configuration (params.yaml and overlays): {error}") from None

SOURCES = list(PARAMS.data.sources)
if not SOURCES:  # every stage after the videos is per source
    raise ValueError("invalid configuration (params.yaml and overlays): data.sources is empty; name at least "
                     "one video source, e.g. data.sources.k400.videos: /path/to/kinetics400/train")
FRAMES_MANIFEST = layout.frames_manifest(PARAMS)
TABLE_OUTPUTS = [layout.table_csv(t) for t in layout.TABLES] + [
    layout.table_markdown(t) for t in layout.TABLES
]


# A tracker or segmenter: a pretraining cell or a source's random-init control it starts from,
# scratch, or the trivial baseline first_box / first_mask (see layout).
CELL_PATTERN = "(" + "|".join(SOURCES) + r")/(twinmae|dropmae)_ep[1-9]\d*"
RANDOM_INIT_PATTERN = "(" + "|".join(SOURCES) + f")/{layout.RANDOM_INIT}"
# external_encoders' rows: external/<key>.
EXTERNAL_KEYS = list(PARAMS.external_encoders)
EXTERNAL_PATTERN = f"{layout.EXTERNAL}/(" + "|".join(EXTERNAL_KEYS) + ")" if EXTERNAL_KEYS else None
TRAINED_PATTERN = "|".join(
    p for p in (layout.SCRATCH, CELL_PATTERN, RANDOM_INIT_PATTERN, EXTERNAL_PATTERN) if p
)
TRACKING_BENCHMARKS = "|".join(PARAMS.tracking.evaluate) or "none"
SEGMENTATION_BENCHMARKS = "|".join(PARAMS.segmentation.evaluate) or "none"


wildcard_constraints:
    source="|".join(SOURCES),
    method="twinmae|dropmae",
    epochs=r"[1-9]\d*",
    table="|".join(layout.TABLES),
    tracker=f"{layout.FIRST_BOX}|{TRAINED_PATTERN}",
    segmenter=f"{layout.FIRST_MASK}|{TRAINED_PATTERN}",
    # Each rule narrows this to its own task's evaluate benchmarks.
    benchmark=f"{TRACKING_BENCHMARKS}|{SEGMENTATION_BENCHMARKS}",
    external="|".join(EXTERNAL_KEYS) or "none",


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


def external_checkpoint(wildcards):
    """An external encoder's file as an input (a missing one stops the run in onstart, naming its key)."""
    path = PARAMS.external_encoders[wildcards.external].path
    if os.path.isfile(path):
        return path
    print(f"warning: external_encoders.{wildcards.external}.path = {path} does not exist (a real run stops)")
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
    return layout.Cell(source=wildcards.source, method=wildcards.method, epochs=int(wildcards.epochs))


def cell_results(table, template):
    """One result file per cell of a table."""
    return [cell.paths(template) for cell in layout.table_cells(PARAMS, table)]


def demo_benchmark_inputs(task, names):
    """The demo benchmark's summary when one of these benchmarks of the task is the one the DAG builds."""
    benchmarks = task.settings(PARAMS).benchmarks
    if any(layout.is_demo_benchmark(benchmarks[name].root) for name in names):
        return {"benchmark": layout.DEMO_BENCHMARK_SUMMARY}
    return {}


def finetune_inputs(task):
    """Input function of a fine-tuning rule: its training benchmarks and the pretraining (or random-init) checkpoint."""

    def inputs(wildcards):
        found = demo_benchmark_inputs(task, task.settings(PARAMS).train)
        encoder = layout.encoder_of_model(getattr(wildcards, task.wildcard))
        if encoder is not None:
            found["pretrained"] = encoder.paths(layout.MODEL)
        return found

    return inputs


def evaluate_inputs(task):
    """Input function of an evaluation rule: the benchmark and the fine-tuned model (none for the trivial baseline)."""

    def inputs(wildcards):
        found = demo_benchmark_inputs(task, [wildcards.benchmark])
        name = getattr(wildcards, task.wildcard)
        if name != task.trivial:
            found["model"] = task.paths(task.model, name)
        return found

    return inputs


def probe_inputs(wildcards):
    return {
        **demo_benchmark_inputs(layout.SEGMENTATION, [wildcards.benchmark]),
        "model": probed_encoder_of(wildcards).paths(layout.MODEL),
    }


def probe_params(wildcards):
    """What a probe result depends on besides the checkpoint (rerun when it changes)."""
    return as_json(
        {
            "benchmark": PARAMS.segmentation.benchmarks[wildcards.benchmark],
            "split": PARAMS.segmentation.evaluate[wildcards.benchmark],
            "settings": PARAMS.segmentation.probe,
        }
    )


def table_inputs(table):
    """Per-cell metrics, plus each tracker's and segmenter's scores and the probe's where configured,
    and the random-init control's identity where the table has its row."""
    inputs = {"metrics": cell_results(table, layout.CELL_METRICS)}
    control = layout.random_init_control(PARAMS, table)
    if control:
        inputs["control"] = control.paths(layout.CELL_METRICS)
    for task in layout.DOWNSTREAM:
        results = task.table_results(PARAMS, table)
        if results:
            inputs[task.section] = results
    probe = layout.probe_results(PARAMS, table)
    if probe:
        inputs["probe"] = probe
    external = [encoder.paths(layout.CELL_METRICS) for encoder in layout.external_encoders(PARAMS, table)]
    if external:
        inputs["external"] = external
    return inputs


def tracking_curve_inputs(wildcards):
    """Every table tracker's scores on the benchmark (rule tracking_curves)."""
    return [
        layout.TRACKING.paths(layout.TRACKING_METRICS, name, wildcards.benchmark)
        for name in layout.curve_trackers(PARAMS)
    ]


def segmentation_sequence_inputs(wildcards):
    """Every table segmenter's scores on the benchmark (rule segmentation_sequences)."""
    return [
        layout.SEGMENTATION.paths(layout.SEGMENTATION_METRICS, name, wildcards.benchmark)
        for name in layout.curve_segmenters(PARAMS)
    ]


def training_curve_inputs(wildcards):
    """The loss.csv and lr.csv of every table run of one kind (rule training_curves)."""
    runs = layout.training_curve_runs(PARAMS)[wildcards.kind].values()
    return [f"{run}/{name}" for run in runs for name in ("loss.csv", "lr.csv")]
