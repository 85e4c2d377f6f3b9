"""Rule extract_frames: decode one source's videos into JPEG frames and a manifest."""
from pathlib import Path

from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import extract_source

with run_stage(snakemake) as config:
    extract_source(config, snakemake.wildcards.source, Path(snakemake.output.manifest).parent)
