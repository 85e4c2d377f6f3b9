"""Where every stage of the experiment DAG reads and writes, shared by the Snakemake rules,
the DVC stages and the stage functions so the two workflow engines cannot disagree on paths.

Paths are relative to the repository root (the working directory of both engines). Templates
use Snakemake's wildcard syntax: {source}, {method}, {epochs}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dropmae.config import DEMO_TRACKING_BENCHMARK, DEMO_VIDEOS, Config, PretrainRun

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

LOGS = "logs/{stage}/{name}.log"

# Tracking. A tracker is named by where its encoder comes from: a pretraining cell
# ("{source}/{method}_ep{epochs}"), SCRATCH (no pretraining) or FIRST_BOX (no network: the
# first-frame box repeated, the floor every tracker must beat).
SCRATCH = "scratch"
FIRST_BOX = "first_box"
DEMO_BENCHMARK_SUMMARY = DEMO_TRACKING_BENCHMARK + "/summary.json"
TRACKER_RUN = "runs/track/{tracker}"
TRACKER_MODEL = TRACKER_RUN + "/model.pth"  # fine-tuned weights + config (no optimiser state)
TRACKER_SUMMARY = TRACKER_RUN + "/run.json"
TRACKING_DIR = "results/tracking/{tracker}/{benchmark}"
TRACKING_METRICS = TRACKING_DIR + "/metrics.json"
TRACKING_RAW = TRACKING_DIR + "/raw"  # result files in the benchmark's official format
TRACKING_PLOT = TRACKING_DIR + "/success.png"


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
class Cell:
    """One pretraining cell: a source, a method and an epoch budget."""

    source: str
    method: str
    epochs: int

    def paths(self, template: str) -> str:
        return template.format(source=self.source, method=self.method, epochs=self.epochs)

    def run(self) -> PretrainRun:
        return PretrainRun(method=self.method, epochs=self.epochs, source=self.source)

    @property
    def name(self) -> str:
        return f"{self.source}/{self.method}_ep{self.epochs}"


def table_source(config: Config) -> str:
    return config.analysis.table_source or next(iter(config.data.sources))


def datasource_epochs(config: Config) -> int:
    return config.analysis.datasource_epochs or min(config.pretrain.epochs)


def all_cells(config: Config) -> list[Cell]:
    """The full grid, data.sources x pretrain.methods x pretrain.epochs (what `dvc repro` builds)."""
    return [Cell(s, m, e) for s in config.data.sources for m in config.pretrain.methods for e in config.pretrain.epochs]


def table_cells(config: Config, table: str) -> list[Cell]:
    """The cells one table reads: method x epochs on the table source, or one cell per source."""
    if table in ("pretraining", "attention"):
        source = table_source(config)
        return [Cell(source, m, e) for m in config.pretrain.methods for e in config.pretrain.epochs]
    if table == "datasources":
        method, epochs = config.analysis.datasource_method, datasource_epochs(config)
        return [Cell(s, method, epochs) for s in config.data.sources]
    raise ValueError(f"unknown table {table!r}; tables are {TABLES}")


def log_path(stage: str, name: str) -> str:
    return LOGS.format(stage=stage, name=name)


def ensure_parent(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- tracking
def tracker_of(cell: Cell) -> str:
    return f"{cell.source}/{cell.method}_ep{cell.epochs}"


def cell_of_tracker(tracker: str) -> Cell | None:
    """The pretraining cell a tracker starts from (None for SCRATCH and FIRST_BOX)."""
    if tracker in (SCRATCH, FIRST_BOX):
        return None
    source, rest = tracker.split("/")
    method, epochs = rest.rsplit("_ep", 1)
    return Cell(source, method, int(epochs))


def tracker_paths(template: str, tracker: str, benchmark: str = "{benchmark}") -> str:
    return template.format(tracker=tracker, benchmark=benchmark)


def tracking_enabled(config: Config) -> bool:
    """Trackers are fine-tuned and evaluated when params.yaml names training and evaluation sets."""
    return bool(config.tracking.train) and bool(config.tracking.evaluate)


def table_trackers(config: Config, table: str) -> list[str]:
    """The trackers whose results a table shows: one per pretraining cell of the table, and for the
    pretraining table the no-pretraining and first-frame-box rows."""
    if not tracking_enabled(config) or table == "attention":
        return []
    trackers = [tracker_of(cell) for cell in table_cells(config, table)]
    if table == "pretraining":
        trackers = ([SCRATCH] if config.tracking.baseline else []) + [FIRST_BOX] + trackers
    return trackers


def tracking_results(config: Config, table: str) -> list[str]:
    return [tracker_paths(TRACKING_METRICS, tracker, benchmark)
            for tracker in table_trackers(config, table) for benchmark in config.tracking.evaluate]


def uses_demo_benchmark(config: Config) -> bool:
    t = config.tracking
    return tracking_enabled(config) and any(
        t.benchmarks[name].root.startswith(DEMO_TRACKING_BENCHMARK) for name in {*t.train, *t.evaluate})
