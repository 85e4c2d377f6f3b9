"""Glue for Snakemake's workflow scripts: typed config, the rule's wildcards as a cell, a log file."""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator

from dropmae.config import Config, config_from_dict
from dropmae.workflow.layout import Cell, ExternalEncoder, RandomInit


def cell_of(wildcards) -> Cell:
    return Cell(source=wildcards.source, method=wildcards.method, epochs=int(wildcards.epochs))


def probed_encoder_of(wildcards) -> Cell | RandomInit | ExternalEncoder:
    """A probe job's encoder: a pretraining cell, an external encoder (an external wildcard), or
    (neither) the source's random-init control."""
    if hasattr(wildcards, "external"):
        return ExternalEncoder(wildcards.external)
    return cell_of(wildcards) if hasattr(wildcards, "method") else RandomInit(wildcards.source)


@contextlib.contextmanager
def run_stage(smk) -> Iterator[Config]:
    """Yield the validated config; stdout, stderr and any traceback go to the rule's log file."""
    log = Path(smk.log[0])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", buffering=1) as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        started = time.time()
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] rule {smk.rule} {dict(smk.wildcards.items())}", flush=True)
        try:
            yield config_from_dict(smk.config)
        except BaseException:
            traceback.print_exc(file=handle)
            raise
        finally:
            print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] rule {smk.rule} ran {time.time() - started:.1f} s", flush=True)
    sys.stdout.flush()
