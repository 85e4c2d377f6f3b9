"""Progress of long loops for whoever watches a job: a tqdm bar on a terminal, periodic lines in a log.

A SLURM job's or a Snakemake rule's stdout is a file, where a bar writes carriage returns that no
one can read; there a loop prints one flushed line every ``every_s`` seconds (and at its end) with
the count, the rate and the time left, as MAE's MetricLogger does for its iterations.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

Item = TypeVar("Item")


def stdout_is_terminal() -> bool:
    """True when stdout is a terminal (a person watching), False for a log file or a pipe."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` past a day), or ``?`` before there is a rate to extrapolate."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


def emit(line: str) -> None:
    """One progress line on stdout, flushed so that a job's log shows it at once."""
    print(line, flush=True)


def track(iterable: Iterable[Item], total: int | None = None, desc: str = "", unit: str = "item",
          every_s: float = 30.0) -> Iterator[Item]:
    """Yield ``iterable``'s items and show progress: a tqdm bar when stdout is a terminal, else a
    line every ``every_s`` seconds and one at the end (``desc: n/total unit, rate unit/s, eta``)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if stdout_is_terminal():
        yield from tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stdout)
        return
    started = last = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s or done == total:
            last = now
            emit(progress_line(desc, done, total, now - started, unit))


def progress_line(desc: str, done: int, total: int | None, elapsed_s: float, unit: str) -> str:
    rate = done / elapsed_s if elapsed_s > 0 else float("nan")
    of = f"/{total}" if total is not None else ""
    eta = format_duration((total - done) / rate) if total is not None and rate > 0 else "?"
    return f"{desc}: {done}{of} {unit} ({rate:.2f} {unit}/s, elapsed {format_duration(elapsed_s)}, eta {eta})"
