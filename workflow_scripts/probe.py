"""Rules probe and probe_random_init: label propagation with one cell's (or a source's random-init
control's) frozen encoder, scored with the DAVIS protocol."""
from dropmae.workflow.smk import probed_encoder_of, run_stage
from dropmae.workflow.stages import probe_stage

with run_stage(snakemake) as config:
    out = snakemake.output
    probe_stage(config, probed_encoder_of(snakemake.wildcards), snakemake.wildcards.benchmark, snakemake.input.model,
                out.metrics, out.overlay, out.raw)
