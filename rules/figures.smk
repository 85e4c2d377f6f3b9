# Figures that compare the DAG's models on one benchmark, from their metrics.json alone: every
# tracker's success and precision curves (CSVs for DVC plots, and the two plots tracking papers
# show), every segmenter's J&F per sequence (CSV and bar chart).

FIGURE_OUTPUTS = [
    layout.TRAINING_CURVES_FIGURE.format(kind=kind) for kind in layout.training_curve_runs(PARAMS)
] + [
    path
    for benchmark in (PARAMS.tracking.evaluate if layout.curve_trackers(PARAMS) else [])
    for path in layout.tracking_curves_outputs(benchmark).values()
] + [
    path
    for benchmark in (PARAMS.segmentation.evaluate if layout.curve_segmenters(PARAMS) else [])
    for path in layout.segmentation_sequences_outputs(benchmark).values()
]


rule tracking_curves:
    input:
        tracking_curve_inputs,
    output:
        success=report(
            layout.tracking_curves_outputs()["success"],
            caption="report/tracking_curve_data.rst",
            category="3 Tracking",
            subcategory="{benchmark}: curve data",
        ),
        precision=report(
            layout.tracking_curves_outputs()["precision"],
            caption="report/tracking_curve_data.rst",
            category="3 Tracking",
            subcategory="{benchmark}: curve data",
        ),
        success_plot=report(
            layout.tracking_curves_outputs()["success_plot"],
            caption="report/tracking_success.rst",
            category="3 Tracking",
            subcategory="{benchmark}: all trackers",
        ),
        precision_plot=report(
            layout.tracking_curves_outputs()["precision_plot"],
            caption="report/tracking_precision.rst",
            category="3 Tracking",
            subcategory="{benchmark}: all trackers",
        ),
    log:
        layout.log_path("tracking_curves", "{benchmark}"),
    params:
        trackers=as_json(layout.curve_trackers(PARAMS)),
    wildcard_constraints:
        benchmark=TRACKING_BENCHMARKS,
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/tracking_curves.py"


rule segmentation_sequences:
    input:
        segmentation_sequence_inputs,
    output:
        csv=layout.segmentation_sequences_outputs()["csv"],
        plot=report(
            layout.segmentation_sequences_outputs()["plot"],
            caption="report/segmentation_sequences.rst",
            category="4 Segmentation",
            subcategory="{benchmark}: all segmenters",
        ),
    log:
        layout.log_path("segmentation_sequences", "{benchmark}"),
    params:
        segmenters=as_json(layout.curve_segmenters(PARAMS)),
    wildcard_constraints:
        benchmark=SEGMENTATION_BENCHMARKS,
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/segmentation_sequences.py"


# Snakemake only (the report's figure): DVC plots each run's loss.csv and lr.csv itself.
rule training_curves:
    input:
        training_curve_inputs,
    output:
        figure=report(
            layout.TRAINING_CURVES_FIGURE,
            caption="report/training_curves.rst",
            category="1 Training",
            subcategory="{kind}",
        ),
    log:
        layout.log_path("training_curves", "{kind}"),
    wildcard_constraints:
        kind="pretraining|tracking|segmentation",
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/training_curves.py"
