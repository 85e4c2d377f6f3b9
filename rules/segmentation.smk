# DropSeg: one segmenter fine-tuned per pretraining cell (and one from no pretraining, one from the
# random-init control), each run over every segmentation.evaluate split from the first frame and its
# mask, scored with the DAVIS protocol (J&F); the first-frame-mask segmenter is the floor. The probe
# scores each pretraining checkpoint (and the control) itself by label propagation with its frozen
# encoder. The fine-tuning is a submitit job (launcher.finetune); the rule waits for it. The demo
# benchmark's DAVIS copy comes from the demo_benchmark rule (rules/tracking.smk).


rule finetune_segmenter:
    input:
        unpack(finetune_inputs(layout.SEGMENTATION)),
    output:
        model=layout.SEGMENTER_MODEL,
        summary=layout.SEGMENTER_SUMMARY,
        loss=layout.training_curve(layout.SEGMENTER_RUN, "loss"),
        lr=layout.training_curve(layout.SEGMENTER_RUN, "lr"),
    log:
        layout.log_path("finetune_segmenter", "{segmenter}"),
    params:
        signature=lambda wildcards: as_json(stages.segmenter_signature(PARAMS, wildcards.segmenter)),
    wildcard_constraints:
        segmenter=TRAINED_PATTERN,
    threads: PARAMS.launcher.finetune.cpus_per_task if PARAMS.launcher.executor == "local" else 1
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/finetune_segmenter.py"


rule evaluate_segmenter:
    input:
        unpack(evaluate_inputs(layout.SEGMENTATION)),
    output:
        metrics=layout.SEGMENTATION_METRICS,
        overlay=report(
            layout.SEGMENTATION_OVERLAY,
            caption="report/segmentation_overlays.rst",
            category="4 Segmentation",
            subcategory="{benchmark}: each segmenter",
        ),
        raw=directory(layout.SEGMENTATION_RAW),
    log:
        layout.log_path("evaluate_segmenter", "{segmenter}/{benchmark}"),
    params:
        evaluate=lambda wildcards: as_json(
            {
                "benchmark": PARAMS.segmentation.benchmarks[wildcards.benchmark],
                "split": PARAMS.segmentation.evaluate[wildcards.benchmark],
                **{key: getattr(PARAMS.segmentation, key) for key in stages.SEGMENTATION_TEST_KEYS},
            }
        ),
    wildcard_constraints:
        benchmark=SEGMENTATION_BENCHMARKS,
    threads: PARAMS.launcher.evaluate.cpus
    resources:
        **job_resources("evaluate"),
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/evaluate_segmenter.py"


rule probe:
    input:
        unpack(probe_inputs),
    output:
        metrics=layout.PROBE_METRICS,
        overlay=report(
            layout.PROBE_OVERLAY,
            caption="report/probe_overlays.rst",
            category="5 Probe",
            subcategory="{benchmark}",
        ),
        raw=directory(layout.PROBE_RAW),
    log:
        layout.log_path("probe", "{source}/{method}_ep{epochs}/{benchmark}"),
    params:
        probe=probe_params,
    wildcard_constraints:
        benchmark=SEGMENTATION_BENCHMARKS,
    threads: PARAMS.launcher.evaluate.cpus
    resources:
        **job_resources("evaluate"),
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/probe.py"


# The probe of a source's random-init control (the tables' "never trained" row): the same job on
# the untrained model.
rule probe_random_init:
    input:
        unpack(probe_inputs),
    output:
        metrics=layout.RANDOM_INIT_PROBE_METRICS,
        overlay=report(
            layout.RANDOM_INIT_PROBE_OVERLAY,
            caption="report/probe_random_init_overlays.rst",
            category="5 Probe",
            subcategory="{benchmark}",
        ),
        raw=directory(layout.RANDOM_INIT_PROBE_RAW),
    log:
        layout.log_path("probe", "{source}/random_init/{benchmark}"),
    params:
        probe=probe_params,
    wildcard_constraints:
        benchmark=SEGMENTATION_BENCHMARKS,
    threads: PARAMS.launcher.evaluate.cpus
    resources:
        **job_resources("evaluate"),
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/probe.py"


# The probe of an external encoder (external_encoders.<key>): the same job on its converted model.pth.
rule probe_external:
    input:
        unpack(probe_inputs),
    output:
        metrics=layout.EXTERNAL_PROBE_METRICS,
        overlay=layout.EXTERNAL_PROBE_OVERLAY,
        raw=directory(layout.EXTERNAL_PROBE_RAW),
    log:
        layout.log_path("probe", "external/{external}/{benchmark}"),
    params:
        probe=probe_params,
    wildcard_constraints:
        benchmark=SEGMENTATION_BENCHMARKS,
    threads: PARAMS.launcher.evaluate.cpus
    resources:
        **job_resources("evaluate"),
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/probe.py"
