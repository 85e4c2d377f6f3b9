"""Rule tracking_curves: every tracker's success and precision curves on one benchmark (CSVs and plots)."""
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import tracking_curves_stage

with run_stage(snakemake) as config:
    tracking_curves_stage(config, snakemake.wildcards.benchmark, dict(snakemake.output.items()))
