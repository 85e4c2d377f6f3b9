"""Rule evaluate_segmenter: segment a benchmark split, write DAVIS result PNGs, score them (J&F), draw overlays."""
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import evaluate_segmenter_stage

with run_stage(snakemake) as config:
    w, out = snakemake.wildcards, snakemake.output
    evaluate_segmenter_stage(config, w.segmenter, w.benchmark, snakemake.input.get("model"), out.metrics, out.overlay,
                             out.raw)
