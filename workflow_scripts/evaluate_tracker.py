"""Rule evaluate_tracker: run a tracker over a benchmark split, write official results, score them."""
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import evaluate_tracker_stage

with run_stage(snakemake) as config:
    w, out = snakemake.wildcards, snakemake.output
    evaluate_tracker_stage(config, w.tracker, w.benchmark, snakemake.input.get("model"), out.metrics, out.plot, out.raw)
