"""Rule pretrain: train one cell through the submitit launcher and wait for it."""
from dropmae.workflow.smk import cell_of, run_stage
from dropmae.workflow.stages import pretrain_cell, pretrain_data_path

with run_stage(snakemake) as config:
    cell = cell_of(snakemake.wildcards)
    pretrain_cell(config, cell, pretrain_data_path(config, cell), snakemake.output.model, snakemake.output.summary)
