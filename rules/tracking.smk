# DropTrack: one tracker fine-tuned per pretraining cell (and one from no pretraining, one from the
# random-init control), each run over every tracking.evaluate split, scored with the benchmark's
# official protocol. The fine-tuning, like pretraining, is a submitit job (launcher.finetune); the
# rule waits for it.


# The demo benchmark in both layouts (got10k/ for tracking, davis/ for segmentation).
rule demo_benchmark:
    input:
        videos=layout.demo_videos(),
    output:
        # The summary, not the folder: the generator writes the benchmark whole and renames it in place.
        summary=layout.DEMO_BENCHMARK_SUMMARY,
    log:
        layout.log_path("demo_benchmark", "demo"),
    params:
        # rebuilt when the generator's settings or sources change, not only when the videos do
        settings=lambda wildcards: as_json(stages.demo_benchmark_signature()),
    resources:
        **job_resources("benchmark"),
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/demo_benchmark.py"


rule finetune_tracker:
    input:
        unpack(finetune_inputs(layout.TRACKING)),
    output:
        model=layout.TRACKER_MODEL,
        summary=layout.TRACKER_SUMMARY,
        loss=layout.training_curve(layout.TRACKER_RUN, "loss"),
        lr=layout.training_curve(layout.TRACKER_RUN, "lr"),
    log:
        layout.log_path("finetune_tracker", "{tracker}"),
    params:
        signature=lambda wildcards: as_json(stages.tracker_signature(PARAMS, wildcards.tracker)),
    wildcard_constraints:
        tracker=TRAINED_PATTERN,
    threads: PARAMS.launcher.finetune.cpus_per_task if PARAMS.launcher.executor == "local" else 1
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/finetune_tracker.py"


rule evaluate_tracker:
    input:
        unpack(evaluate_inputs(layout.TRACKING)),
    output:
        metrics=layout.TRACKING_METRICS,
        plot=report(
            layout.TRACKING_PLOT,
            caption="report/tracker_success.rst",
            category="3 Tracking",
            subcategory="{benchmark}: each tracker",
        ),
        raw=directory(layout.TRACKING_RAW),
    log:
        layout.log_path("evaluate_tracker", "{tracker}/{benchmark}"),
    params:
        evaluate=lambda wildcards: as_json(
            {
                "benchmark": PARAMS.tracking.benchmarks[wildcards.benchmark],
                "split": PARAMS.tracking.evaluate[wildcards.benchmark],
                "clip_margin": PARAMS.tracking.clip_margin,
            }
        ),
    wildcard_constraints:
        benchmark=TRACKING_BENCHMARKS,
    threads: PARAMS.launcher.evaluate.cpus
    resources:
        **job_resources("evaluate"),
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/evaluate_tracker.py"
