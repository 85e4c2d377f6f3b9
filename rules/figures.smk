# Figures that compare the DAG's models on one benchmark, from their metrics.json alone: every
# tracker's success and precision curves (CSVs for DVC plots, and the two plots tracking papers
# show), every segmenter's J&F per sequence (CSV and bar chart).

FIGURE_OUTPUTS = [
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
        **layout.tracking_curves_outputs(),
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
        **layout.segmentation_sequences_outputs(),
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
