"""Rule attention_study: TwinMAE and DropMAE per setting and seed, trained here (resumable) and
measured on held-out pairs; the runs folder is not an output, so a rerun resumes its runs."""
from pathlib import Path

from dropmae.analysis.attention_study import run_attention_study
from dropmae.workflow import layout
from dropmae.workflow.smk import run_stage

with run_stage(snakemake) as config:
    run_attention_study(config, Path(snakemake.input.manifest).parent, dict(snakemake.output.items()),
                        layout.ATTENTION_STUDY_RUNS)
