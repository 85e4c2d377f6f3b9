"""One cell of the pretraining grid (a method and an epoch budget on one data source), and the
choice of one cell from the command line.

The DAG (dropmae.workflow.layout) names cells and their files with it; pretraining builds and
records the model of one. A checkpoint stores it as ``dataclasses.asdict`` under "run" (keys
method, epochs, source, in this order) and rebuilds it with ``Cell(**state["run"])``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dropmae.config.sections import METHODS, Config, ConfigError


@dataclass(frozen=True)
class Cell:
    """One cell of the pretraining grid: a method and an epoch budget on one source (None only for
    a run outside the DAG: `dropmae pretrain` without --data-source)."""

    method: str
    epochs: int
    source: str | None = None

    def drop_probability(self, config: Config) -> float:
        return config.pretrain.asad_p if self.method == "dropmae" else 0.0

    def paths(self, template: str, **wildcards: str) -> str:
        """``template`` with this cell's wildcards, and others (``benchmark=``) where it has them."""
        return template.format(source=self.source, method=self.method, epochs=self.epochs, **wildcards)

    @property
    def name(self) -> str:
        return f"{self.source}/{self.method}_ep{self.epochs}"

    def record(self) -> dict:
        """The cell as the DAG's metrics and summaries write it: source first, as its name reads."""
        return {"source": self.source, "method": self.method, "epochs": self.epochs}


def resolve_run(config: Config, method: str | None, epochs: int | None, source: str | None = None) -> Cell:
    """Pick one cell of the grid; with one method or one epoch budget configured it is the default."""
    p = config.pretrain
    if method is None:
        if len(p.methods) != 1:
            raise ConfigError(f"pretrain.methods lists {p.methods}: choose one with --method")
        method = p.methods[0]
    if method not in METHODS:
        raise ConfigError(f"method must be one of {list(METHODS)}, got {method!r}")
    if epochs is None:
        if len(p.epochs) != 1:
            raise ConfigError(f"pretrain.epochs lists {p.epochs}: choose one with --epochs")
        epochs = p.epochs[0]
    if epochs <= 0:
        raise ConfigError(f"epochs must be positive, got {epochs}")
    if source is not None and source not in config.data.sources:
        raise ConfigError(f"data.sources has no source {source!r}; configured: {sorted(config.data.sources)}")
    return Cell(method=method, epochs=epochs, source=source)
