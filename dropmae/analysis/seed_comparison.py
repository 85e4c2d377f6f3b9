"""Two groups of seeded runs compared with an interval: is one initialisation better than another?

The demo's fine-tunings move by up to 7 AO with the seed alone, so one run per setting cannot say
which setting is better. This compares the runs of two settings, as ``benchmarks/demo_payoff.py``
records them in its ``results.jsonl`` (one JSON line per run: ``name``, ``step``, and per benchmark
a dict of scores), with Welch's t interval of the difference of their means: the two groups hold
different seeds of different settings, so they are neither paired nor of equal variance.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import ttest_ind

from dropmae.analysis.training_log import json_lines

# The score each step reports per benchmark: AO for trackers, J&F for segmenters and the probe.
SCORE_BY_STEP = {"track": "ao", "score-track": "ao", "segment": "jf", "score-segment": "jf", "probe": "jf"}


@dataclass(frozen=True)
class GroupDifference:
    """``name`` minus ``against`` on one benchmark, in score points (x100)."""

    benchmark: str
    score: str
    runs: tuple[str, ...]
    baseline_runs: tuple[str, ...]
    mean: float
    baseline_mean: float
    difference: float
    low: float
    high: float
    confidence: float

    def as_dict(self) -> dict:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in self.__dict__.items()}


def read_runs(results: str | Path) -> list[dict]:
    """Every scored record of a results.jsonl; a later record of a name replaces an earlier one (a rerun)."""
    latest: dict[str, dict] = {}
    for _, record in json_lines(Path(results)):
        if record.get("step") in SCORE_BY_STEP:
            latest[record["name"]] = record
    return list(latest.values())


def _group(runs: Iterable[dict], pattern: str, path: str) -> list[dict]:
    group = [run for run in runs if fnmatch.fnmatchcase(run["name"], pattern)]
    if not group:
        raise ValueError(f"{path}: no scored run's name matches {pattern!r}")
    steps = {SCORE_BY_STEP[run["step"]] for run in group}
    if len(steps) > 1:
        raise ValueError(f"{path}: {pattern!r} matches runs that report different scores ({sorted(steps)}): "
                         f"{sorted(run['name'] for run in group)}")
    return group


def _scores(group: Sequence[dict], benchmark: str, score: str) -> tuple[tuple[str, ...], np.ndarray]:
    scored = [(run["name"], run[benchmark][score]) for run in group
              if isinstance(run.get(benchmark), dict) and run[benchmark].get(score) is not None]
    return tuple(name for name, _ in scored), 100.0 * np.array([value for _, value in scored], dtype=float)


def compare_groups(results: str | Path, name: str, against: str, confidence: float = 0.95) -> list[GroupDifference]:
    """Per benchmark both groups report, mean(``name`` runs) - mean(``against`` runs) and Welch's
    ``confidence`` interval of it. ``name`` and ``against`` are shell patterns over run names
    (``tw_4k_s*``); each group needs at least two scored runs on a benchmark to be compared there."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    runs = read_runs(results)
    group, baseline = _group(runs, name, str(results)), _group(runs, against, str(results))
    shared = sorted({run["name"] for run in group} & {run["name"] for run in baseline})
    if shared:
        raise ValueError(f"{results}: {name!r} and {against!r} both match {shared}: a run counts in one group only")
    score = SCORE_BY_STEP[group[0]["step"]]
    if SCORE_BY_STEP[baseline[0]["step"]] != score:
        raise ValueError(f"{results}: {name!r} reports {score} but {against!r} reports "
                         f"{SCORE_BY_STEP[baseline[0]['step']]}: compare trackers with trackers")
    benchmarks = [key for key, value in group[0].items() if isinstance(value, dict) and score in value]
    differences = []
    for benchmark in benchmarks:
        names, values = _scores(group, benchmark, score)
        baseline_names, baseline_values = _scores(baseline, benchmark, score)
        for pattern, found in ((name, names), (against, baseline_names)):
            if len(found) < 2:
                raise ValueError(f"{results}: {pattern!r} has {len(found)} run(s) scored on {benchmark!r} "
                                 f"({list(found)}); an interval needs at least two seeds")
        interval = ttest_ind(values, baseline_values, equal_var=False).confidence_interval(confidence)
        differences.append(GroupDifference(
            benchmark=benchmark, score=score, runs=names, baseline_runs=baseline_names, mean=float(values.mean()),
            baseline_mean=float(baseline_values.mean()), difference=float(values.mean() - baseline_values.mean()),
            low=float(interval.low), high=float(interval.high), confidence=confidence))
    return differences


def differences_markdown(differences: Sequence[GroupDifference], name: str, against: str) -> str:
    """A table: one row per benchmark."""
    if not differences:
        return ""
    percent = round(100 * differences[0].confidence)
    lines = [f"| benchmark | {name} ({differences[0].score}) | {against} | difference | {percent}% interval (Welch) |",
             "| --- | --- | --- | --- | --- |"]
    for d in differences:
        lines.append(f"| {d.benchmark} | {d.mean:.1f} (n={len(d.runs)}) | {d.baseline_mean:.1f} (n={len(d.baseline_runs)}) "
                     f"| {d.difference:+.1f} | [{d.low:+.1f}, {d.high:+.1f}] |")
    return "\n".join(lines) + "\n"
