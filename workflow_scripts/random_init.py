"""Rule random_init: save a source's untrained control encoder in a pretraining cell's model.pth format."""
from dropmae.workflow.layout import RandomInit
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import random_init_stage

with run_stage(snakemake) as config:
    random_init_stage(config, RandomInit(snakemake.wildcards.source), snakemake.output.model,
                      snakemake.output.metrics)
