"""Rule probe: label propagation with one cell's frozen pretraining encoder, scored with the DAVIS protocol."""
from dropmae.workflow.smk import cell_of, run_stage
from dropmae.workflow.stages import probe_stage

with run_stage(snakemake) as config:
    out = snakemake.output
    probe_stage(config, cell_of(snakemake.wildcards), snakemake.wildcards.benchmark, snakemake.input.model,
                out.metrics, out.overlay, out.raw)
