"""Rule training_curves: loss and lr per step of every table run of one kind, in one figure."""
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import training_curves_stage

with run_stage(snakemake) as config:
    training_curves_stage(config, snakemake.wildcards.kind, snakemake.output.figure)
