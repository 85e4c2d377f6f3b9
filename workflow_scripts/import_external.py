"""Rule import_external: an external pretrained encoder converted to a pretraining cell's model.pth format."""
from dropmae.workflow.layout import ExternalEncoder
from dropmae.workflow.smk import run_stage
from dropmae.workflow.stages import import_external_stage

with run_stage(snakemake) as config:
    import_external_stage(config, ExternalEncoder(snakemake.wildcards.external), snakemake.output.model,
                          snakemake.output.metrics)
