"""Rule finetune_segmenter: fine-tune one segmenter through the submitit launcher and wait for it."""
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import finetune_segmenter_stage

with run_stage(snakemake) as config:
    pretrained = snakemake.input.get("pretrained")
    finetune_segmenter_stage(config, snakemake.wildcards.segmenter, pretrained, snakemake.output.model,
                             snakemake.output.summary)
