"""Rule finetune_tracker: fine-tune one tracker through the submitit launcher and wait for it."""
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import finetune_tracker_stage

with run_stage(snakemake) as config:
    pretrained = snakemake.input.get("pretrained")
    finetune_tracker_stage(config, snakemake.wildcards.tracker, pretrained, snakemake.output.model,
                           snakemake.output.summary)
