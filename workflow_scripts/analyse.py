"""Rule analyse: held-out loss, decoder attention per layer and the figures of one cell."""
from pathlib import Path

from dropmae.workflow.smk import cell_of, run_stage
from dropmae.workflow.stages import analyse_cell

with run_stage(snakemake) as config:
    out = snakemake.output
    analyse_cell(config, cell_of(snakemake.wildcards), snakemake.input.model, snakemake.input.summary,
                 Path(snakemake.input.manifest).parent, out.metrics, out.attention, out.reconstruction,
                 out.temporal_matching)
