"""Rule demo_benchmark: pseudo-sequences of real objects over the demo clips (GOT-10k and DAVIS layouts)."""
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import build_demo_benchmark_stage

with run_stage(snakemake):
    build_demo_benchmark_stage(snakemake.input.videos, snakemake.output.summary)
