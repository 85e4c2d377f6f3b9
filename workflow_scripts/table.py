"""Rules table_*: regenerate one table from the per-cell result files."""
from dropmae.workflow.smk import run_stage
from dropmae.workflow.tables import build_table

with run_stage(snakemake) as config:
    build_table(config, snakemake.rule.removeprefix("table_"), dict(snakemake.output.items()))
