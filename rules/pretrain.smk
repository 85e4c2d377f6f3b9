# One pretraining cell (source x method x epochs) per job. The rule runs on the submitting
# host: it launches a submitit job (SLURM multi-node DDP, or the local executor) with the
# resources of params.yaml launcher.pretrain, waits for it through requeues, and fails with the
# job's error. Checkpoints stay in the run folder across reruns; the rule's outputs are the
# final weights and the launch summary.


rule pretrain:
    input:
        manifest=FRAMES_MANIFEST,
    output:
        model=layout.MODEL,
        summary=layout.RUN_SUMMARY,
        loss=layout.training_curve(layout.RUN_DIR, "loss"),
        lr=layout.training_curve(layout.RUN_DIR, "lr"),
    log:
        layout.log_path("pretrain", "{source}/{method}_ep{epochs}"),
    params:
        signature=lambda wildcards: as_json(stages.run_signature(PARAMS, cell_of(wildcards))),
    # With the local executor the job's CPUs are taken from this machine's cores.
    threads: PARAMS.launcher.pretrain.cpus_per_task if PARAMS.launcher.executor == "local" else 1
    # Before any other ready job: every fine-tuning and probe waits on a pretraining. Without it
    # the scheduler once ran the demo's second pretraining (both cores) after all the TwinMAE
    # fine-tunings (one core each), and the demo took 5 minutes longer.
    priority: 10
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/pretrain.py"


# A source's random-init control: the model a cell starts training from (model.*, pretrain.seed),
# saved untrained in a cell's model.pth format, with its identity for the tables. Seconds on the
# submitting host.
rule random_init:
    output:
        model=layout.RANDOM_INIT_MODEL,
        metrics=layout.RANDOM_INIT_METRICS,
    log:
        layout.log_path("random_init", "{source}"),
    params:
        signature=as_json(stages.random_init_signature(PARAMS)),
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/random_init.py"


# An external pretrained encoder (params.yaml external_encoders.<key>): its file read weights-only
# and converted to a cell's model.pth format (dropmae.models.external), with its label, format,
# load report and the sha256 of the file for the tables. Seconds on the submitting host.
rule import_external:
    input:
        checkpoint=external_checkpoint,
    output:
        model=layout.EXTERNAL_MODEL,
        metrics=layout.EXTERNAL_METRICS,
    log:
        layout.log_path("import_external", "{external}"),
    params:
        encoder=lambda wildcards: as_json(PARAMS.external_encoders[wildcards.external]),
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/import_external.py"
