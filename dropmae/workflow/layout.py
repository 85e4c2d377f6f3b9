"""Where every stage of the experiment DAG reads and writes, shared by the Snakemake rules,
the DVC stages and the stage functions so the two workflow engines cannot disagree on paths.

Paths are relative to the repository root (the working directory of both engines). Templates
use Snakemake's wildcard syntax: {source}, {method}, {epochs}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dropmae.config import DEMO_VIDEOS, Config, PretrainRun

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
