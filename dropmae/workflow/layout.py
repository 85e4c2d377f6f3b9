"""Where every stage of the experiment DAG reads and writes, shared by the Snakemake rules,
the DVC stages and the stage functions so the two workflow engines cannot disagree on paths.

Paths are relative to the repository root (the working directory of both engines). Templates
use Snakemake's wildcard syntax: {source}, {method}, {epochs}, {tracker}, {segmenter}, {benchmark}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Cell (one pretraining cell) is defined with the config, which picks one from the command line;
# the DAG names cells and their files with it and re-exports it here.
from dropmae.config import DEMO_TRACKING_BENCHMARK, DEMO_VIDEOS, Cell, Config

CELL = "{method}_ep{epochs}"
RUN_DIR = "runs/pretrain/{source}/" + CELL
MODEL = RUN_DIR + "/model.pth"  # final weights + config of a finished cell (no optimiser state)
RUN_SUMMARY = RUN_DIR + "/run.json"  # the launch: job ids, requeues, wall time, steps, final loss

CELL_DIR = "results/cells/{source}/" + CELL
CELL_METRICS = CELL_DIR + "/metrics.json"
CELL_ATTENTION = CELL_DIR + "/attention.csv"
CELL_RECONSTRUCTION = CELL_DIR + "/reconstruction.png"
CELL_TEMPORAL_MATCHING = CELL_DIR + "/temporal_matching.png"
CELLS_ROOT = "results/cells"

TABLES = ("pretraining", "datasources", "attention")
ATTENTION_PLOT = "results/attention_layers.png"
ATTENTION_LAYERS = "results/attention_layers.csv"
METRICS = "results/metrics_{table}.json"

# The seeded attention study (`dropmae attention-study`, rule attention_study; no table reads it).
ATTENTION_STUDY_DIR = "results/attention_study"
ATTENTION_STUDY_RUNS = "runs/attention_study"  # <setting>/seed<k>/<method>/: one pretraining run each
ATTENTION_STUDY_FILES = {"runs": "runs.csv", "summary": "summary.csv", "markdown": "summary.md",
                         "plot": "attention_study.png"}

LOGS = "logs/{stage}/{name}.log"

# Downstream models. A tracker or a segmenter is named by where its encoder comes from: a
# pretraining cell (its Cell.name, "{source}/{method}_ep{epochs}"), a source's untrained control
# (RandomInit.name, "{source}/random_init"), SCRATCH (no pretraining), or a trivial baseline with
# no network, the floor every trained model must beat: FIRST_BOX (the first-frame box repeated)
# for tracking, FIRST_MASK (the first-frame mask copied to every frame) for segmentation.
SCRATCH = "scratch"
FIRST_BOX = "first_box"
FIRST_MASK = "first_mask"
# The demo benchmark (GOT-10k and DAVIS layouts) is one rule's output, marked by its summary.
DEMO_BENCHMARK_SUMMARY = DEMO_TRACKING_BENCHMARK + "/summary.json"

TRACKER_RUN = "runs/track/{tracker}"
TRACKER_MODEL = TRACKER_RUN + "/model.pth"  # fine-tuned weights + config (no optimiser state)
TRACKER_SUMMARY = TRACKER_RUN + "/run.json"
TRACKING_DIR = "results/tracking/{tracker}/{benchmark}"
TRACKING_METRICS = TRACKING_DIR + "/metrics.json"
TRACKING_RAW = TRACKING_DIR + "/raw"  # result files in the benchmark's official format
TRACKING_PLOT = TRACKING_DIR + "/success.png"

SEGMENTER_RUN = "runs/segment/{segmenter}"
SEGMENTER_MODEL = SEGMENTER_RUN + "/model.pth"  # fine-tuned weights + config (no optimiser state)
SEGMENTER_SUMMARY = SEGMENTER_RUN + "/run.json"
SEGMENTATION_DIR = "results/segmentation/{segmenter}/{benchmark}"
SEGMENTATION_METRICS = SEGMENTATION_DIR + "/metrics.json"
SEGMENTATION_RAW = SEGMENTATION_DIR + "/raw"  # DAVIS-format palette PNGs, <seq>/<frame>.png
SEGMENTATION_OVERLAY = SEGMENTATION_DIR + "/overlays.png"  # a few predicted masks over their frames

# The label-propagation probe scores a pretraining checkpoint itself (no fine-tuning).
PROBE_DIR = "results/probe/{source}/" + CELL + "/{benchmark}"
PROBE_METRICS = PROBE_DIR + "/metrics.json"
PROBE_RAW = PROBE_DIR + "/raw"
PROBE_OVERLAY = PROBE_DIR + "/overlays.png"

# The control encoder of a source: its pretraining model built and seeded as a cell's, saved untrained
# in a cell's model.pth format. Its files sit where a cell's of that source would, in a random_init
# folder instead of {method}_ep{epochs}; trackers and segmenters fine-tuned from it, and its probe,
# are named "{source}/random_init" (RandomInit.name).
RANDOM_INIT = "random_init"
RANDOM_INIT_MODEL = MODEL.replace(CELL, RANDOM_INIT)
RANDOM_INIT_METRICS = CELL_METRICS.replace(CELL, RANDOM_INIT)  # its checkpoint, sha256 and recipe, for the tables
RANDOM_INIT_PROBE_METRICS = PROBE_METRICS.replace(CELL, RANDOM_INIT)
RANDOM_INIT_PROBE_RAW = PROBE_RAW.replace(CELL, RANDOM_INIT)
RANDOM_INIT_PROBE_OVERLAY = PROBE_OVERLAY.replace(CELL, RANDOM_INIT)


# An external pretrained encoder (params.yaml external_encoders.<key>): its files sit where a cell's
# would, in external/<key> instead of <source>/<method>_ep<epochs>; its trackers, segmenters and
# probe are named "external/<key>" (ExternalEncoder.name). model.pth is the file converted to our
# checkpoint format; metrics.json records its label, format, source file and both sha256s.
EXTERNAL = "external"
EXTERNAL_FOLDER = EXTERNAL + "/{external}"
EXTERNAL_MODEL = MODEL.replace("{source}/" + CELL, EXTERNAL_FOLDER)
EXTERNAL_METRICS = CELL_METRICS.replace("{source}/" + CELL, EXTERNAL_FOLDER)
EXTERNAL_PROBE_METRICS = PROBE_METRICS.replace("{source}/" + CELL, EXTERNAL_FOLDER)
EXTERNAL_PROBE_RAW = PROBE_RAW.replace("{source}/" + CELL, EXTERNAL_FOLDER)
EXTERNAL_PROBE_OVERLAY = PROBE_OVERLAY.replace("{source}/" + CELL, EXTERNAL_FOLDER)


def table_csv(table: str) -> str:
    return f"results/table_{table}.csv"


def table_markdown(table: str) -> str:
    return f"results/table_{table}.md"


def frames_dir(config: Config, source: str = "{source}") -> str:
    return f"{config.data.frames_root.rstrip('/')}/{source}"


def frames_manifest(config: Config, source: str = "{source}") -> str:
    return f"{frames_dir(config, source)}/manifest.csv"


def demo_videos() -> str:
    return DEMO_VIDEOS


@dataclass(frozen=True)
class RandomInit:
    """The control encoder of a source (never trained); its paths are a cell's templates with the
    cell's folder replaced by random_init, so the probe and the tables treat it like a cell."""

    source: str

    def paths(self, template: str, **wildcards: str) -> str:
        return template.replace(CELL, RANDOM_INIT).format(source=self.source, **wildcards)

    @property
    def name(self) -> str:
        return f"{self.source}/{RANDOM_INIT}"

    def record(self) -> dict:
        """As Cell.record: what the DAG's metrics write of it."""
        return {"source": self.source}


@dataclass(frozen=True)
class ExternalEncoder:
    """An encoder of params.yaml external_encoders; its paths are a cell's templates with the
    cell's folder replaced by external/<key>, so the probe and the tables treat it like a cell."""

    key: str

    def paths(self, template: str, **wildcards: str) -> str:
        return template.replace("{source}/" + CELL, EXTERNAL_FOLDER).format(external=self.key, **wildcards)

    @property
    def name(self) -> str:
        return f"{EXTERNAL}/{self.key}"

    def record(self) -> dict:
        """As Cell.record: what the DAG's metrics write of it."""
        return {"external": self.key}


def external_encoders(config: Config, table: str = "pretraining") -> list[ExternalEncoder]:
    """The external encoders a table shows (the pretraining table only)."""
    return [ExternalEncoder(key) for key in config.external_encoders] if table == "pretraining" else []


def table_source(config: Config) -> str:
    return config.analysis.table_source or next(iter(config.data.sources))


def attention_study_source(config: Config) -> str:
    return config.attention_study.source or table_source(config)


def attention_study_outputs(output_dir: str = ATTENTION_STUDY_DIR) -> dict[str, str]:
    """The study's files (ATTENTION_STUDY_FILES) in ``output_dir``, by role."""
    return {role: f"{output_dir.rstrip('/')}/{name}" for role, name in ATTENTION_STUDY_FILES.items()}


def datasource_epochs(config: Config) -> int:
    return config.analysis.datasource_epochs or min(config.pretrain.epochs)


def all_cells(config: Config) -> list[Cell]:
    """The full grid, data.sources x pretrain.methods x pretrain.epochs (what `dvc repro` builds)."""
    return [Cell(source=s, method=m, epochs=e) for s in config.data.sources for m in config.pretrain.methods for e in config.pretrain.epochs]


def table_cells(config: Config, table: str) -> list[Cell]:
    """The cells one table reads: method x epochs on the table source, or one cell per source."""
    if table in ("pretraining", "attention"):
        source = table_source(config)
        return [Cell(source=source, method=m, epochs=e) for m in config.pretrain.methods for e in config.pretrain.epochs]
    if table == "datasources":
        method, epochs = config.analysis.datasource_method, datasource_epochs(config)
        return [Cell(source=s, method=method, epochs=epochs) for s in config.data.sources]
    raise ValueError(f"unknown table {table!r}; tables are {TABLES}")


def random_init_control(config: Config, table: str) -> RandomInit | None:
    """The pretraining table's control encoder (analysis.random_init_control), when the table shows
    downstream or probe scores: without them the control has nothing to be compared on."""
    if table != "pretraining" or not config.analysis.random_init_control:
        return None
    if not (any(task.enabled(config) for task in DOWNSTREAM) or probe_enabled(config)):
        return None
    return RandomInit(table_source(config))


def log_path(stage: str, name: str) -> str:
    return LOGS.format(stage=stage, name=name)


def ensure_parent(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def parse_cell(name: str) -> Cell:
    """The cell of a name written as ``Cell.name`` ("{source}/{method}_ep{epochs}")."""
    source, _, rest = name.partition("/")
    method, _, epochs = rest.rpartition("_ep")
    if not (source and method and epochs.isdigit()) or "/" in rest:
        raise ValueError(f"{name!r} is not a pretraining cell name <source>/<method>_ep<epochs>")
    return Cell(source=source, method=method, epochs=int(epochs))


def is_demo_benchmark(root: str) -> bool:
    return root == DEMO_TRACKING_BENCHMARK or root.startswith(DEMO_TRACKING_BENCHMARK + "/")


# ----------------------------------------------------------------------------- downstream tasks
@dataclass(frozen=True)
class Downstream:
    """A downstream task fine-tuned from every pretraining cell (tracking, segmentation): its
    config section, the wildcard naming its models in the path templates, its trivial
    baseline, and where its models and scores live."""

    section: str  # "tracking" | "segmentation": benchmarks, train, evaluate and baseline keys
    wildcard: str  # "tracker" | "segmenter"
    trivial: str  # the no-network baseline
    model: str  # template of a fine-tuned model
    summary: str  # template of its launch summary
    metrics: str  # template of its scores on one benchmark

    def settings(self, config: Config):
        return getattr(config, self.section)

    def paths(self, template: str, name: str, benchmark: str = "{benchmark}") -> str:
        """``template`` for the model ``name`` (a cell or random-init name, SCRATCH or the trivial baseline)."""
        return template.format(**{self.wildcard: name, "benchmark": benchmark})

    def enabled(self, config: Config) -> bool:
        """Models are fine-tuned and evaluated when params.yaml names training and evaluation sets."""
        settings = self.settings(config)
        return bool(settings.train) and bool(settings.evaluate)

    def table_models(self, config: Config, table: str) -> list[str]:
        """The models whose scores a table shows: one per pretraining cell of the table, and for the
        pretraining table the no-pretraining, random-init and trivial-baseline rows."""
        if not self.enabled(config) or table == "attention":
            return []
        names = [cell.name for cell in table_cells(config, table)]
        if table == "pretraining":
            control = random_init_control(config, table)
            names = (([SCRATCH] if self.settings(config).baseline else []) + ([control.name] if control else [])
                     + [self.trivial] + [encoder.name for encoder in external_encoders(config, table)] + names)
        return names

    def table_results(self, config: Config, table: str) -> list[str]:
        return [self.paths(self.metrics, name, benchmark)
                for name in self.table_models(config, table) for benchmark in self.settings(config).evaluate]

    def benchmark_roots(self, config: Config) -> list[str]:
        settings = self.settings(config)
        return [settings.benchmarks[name].root for name in {*settings.train, *settings.evaluate}]


TRACKING = Downstream("tracking", "tracker", FIRST_BOX, TRACKER_MODEL, TRACKER_SUMMARY, TRACKING_METRICS)
SEGMENTATION = Downstream("segmentation", "segmenter", FIRST_MASK, SEGMENTER_MODEL, SEGMENTER_SUMMARY,
                          SEGMENTATION_METRICS)
DOWNSTREAM = (TRACKING, SEGMENTATION)


def encoder_of_model(name: str) -> Cell | RandomInit | ExternalEncoder | None:
    """The pretraining cell, random-init control or external encoder a tracker or segmenter starts
    from (None for SCRATCH and the trivial baselines)."""
    if name in (SCRATCH, FIRST_BOX, FIRST_MASK):
        return None
    source, _, rest = name.partition("/")
    if source == EXTERNAL and rest:
        return ExternalEncoder(rest)
    if source and rest == RANDOM_INIT:
        return RandomInit(source)
    return parse_cell(name)


def probe_enabled(config: Config) -> bool:
    """The probe runs on every segmentation.evaluate benchmark unless segmentation.probe.enabled is off."""
    return config.segmentation.probe.enabled and bool(config.segmentation.evaluate)


def table_probe_encoders(config: Config, table: str) -> list[Cell | RandomInit | ExternalEncoder]:
    """The encoders a table shows probe scores of: its cells, and the pretraining table's control
    and external encoders."""
    if not probe_enabled(config) or table == "attention":
        return []
    control = random_init_control(config, table)
    return table_cells(config, table) + ([control] if control else []) + external_encoders(config, table)


def probe_results(config: Config, table: str) -> list[str]:
    return [encoder.paths(PROBE_METRICS, benchmark=benchmark)
            for encoder in table_probe_encoders(config, table) for benchmark in config.segmentation.evaluate]


def uses_demo_benchmark(config: Config) -> bool:
    roots = [root for task in DOWNSTREAM if task.enabled(config) for root in task.benchmark_roots(config)]
    if probe_enabled(config):
        roots += [config.segmentation.benchmarks[name].root for name in config.segmentation.evaluate]
    return any(is_demo_benchmark(root) for root in roots)


# ----------------------------------------------------------------------------- curves and figures
# Every training run's loss and lr per logged step (engine.curves writes them into the run folder
# when the run completes), declared as DVC plots and drawn in the report.
TRAINING_CURVES = ("loss", "lr")


def training_curve(run_template: str, curve: str) -> str:
    """The ``curve`` ("loss" or "lr") CSV of a run folder template (RUN_DIR, TRACKER_RUN, SEGMENTER_RUN)."""
    from dropmae.engine.curves import CURVE_FILES

    return f"{run_template}/{CURVE_FILES[curve]}"


# Per tracking.evaluate benchmark: every tracker's success and precision curves as CSV (threshold,
# tracker, rate: one line per tracker in DVC's plots) and as the figures tracking papers show.
TRACKING_CURVES_DIR = "results/tracking_curves/{benchmark}"
TRACKING_CURVE_FILES = {"success": "success.csv", "precision": "precision.csv",
                        "success_plot": "success.png", "precision_plot": "precision.png"}
# The DVC plot template of those CSVs: one colour per tracker, one dash per revision (dvc plots diff).
TRACKER_CURVES_TEMPLATE = "rules/plot_templates/tracker_curves.json"


def _benchmark_outputs(folder: str, files: dict[str, str], benchmark: str) -> dict[str, str]:
    return {role: f"{folder.format(benchmark=benchmark)}/{name}" for role, name in files.items()}


def _table_models(kind, config: Config) -> list[str]:
    """The models of the pretraining and data-sources tables, each once, in table order."""
    return list(dict.fromkeys(kind.table_models(config, "pretraining") + kind.table_models(config, "datasources")))


def tracking_curves_outputs(benchmark: str = "{benchmark}") -> dict[str, str]:
    return _benchmark_outputs(TRACKING_CURVES_DIR, TRACKING_CURVE_FILES, benchmark)


def curve_trackers(config: Config) -> list[str]:
    """The trackers a benchmark's curves compare: those of the pretraining and data-sources tables."""
    return _table_models(TRACKING, config)


# Per segmentation.evaluate benchmark: J&F of every segmenter per sequence (CSV and bar chart).
SEGMENTATION_SEQUENCES_DIR = "results/segmentation_sequences/{benchmark}"
SEGMENTATION_SEQUENCE_FILES = {"csv": "jf_per_sequence.csv", "plot": "jf_per_sequence.png"}


def segmentation_sequences_outputs(benchmark: str = "{benchmark}") -> dict[str, str]:
    return _benchmark_outputs(SEGMENTATION_SEQUENCES_DIR, SEGMENTATION_SEQUENCE_FILES, benchmark)


def curve_segmenters(config: Config) -> list[str]:
    """The segmenters a benchmark's per-sequence chart compares: those of the pretraining and data-sources tables."""
    return _table_models(SEGMENTATION, config)


# Per kind of training (pretraining, tracking, segmentation): every table run's loss and lr against
# the step in one figure, for the report (DVC plots the runs' loss.csv / lr.csv themselves).
TRAINING_CURVES_FIGURE = "results/training_curves/{kind}.png"


def training_curve_runs(config: Config) -> dict[str, dict[str, str]]:
    """{kind: {model name: run folder}} of the runs the tables show, for the kinds that have any."""
    cells = list(dict.fromkeys(table_cells(config, "pretraining") + table_cells(config, "datasources")))
    runs = {"pretraining": {cell.name: cell.paths(RUN_DIR) for cell in cells}}
    for task, names in ((TRACKING, curve_trackers(config)), (SEGMENTATION, curve_segmenters(config))):
        trained = [name for name in names if name != task.trivial]
        if trained:
            run_template = task.model.rsplit("/", 1)[0]
            runs[task.section] = {name: task.paths(run_template, name) for name in trained}
    return runs
