"""Rule segmentation_sequences: every segmenter's J&F per sequence of one benchmark (CSV and bar chart)."""
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import segmentation_sequences_stage

with run_stage(snakemake) as config:
    segmentation_sequences_stage(config, snakemake.wildcards.benchmark, dict(snakemake.output.items()))
