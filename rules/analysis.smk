# Held-out measurements of one pretraining cell: reconstruction loss, decoder attention per
# layer, the reconstruction grid and the temporal-matching (f_tem) heatmap.


rule analyse:
    input:
        model=layout.MODEL,
        summary=layout.RUN_SUMMARY,
        manifest=FRAMES_MANIFEST,
    output:
        metrics=layout.CELL_METRICS,
        attention=layout.CELL_ATTENTION,
        reconstruction=layout.CELL_RECONSTRUCTION,
        temporal_matching=layout.CELL_TEMPORAL_MATCHING,
    log:
        layout.log_path("analyse", "{source}/{method}_ep{epochs}"),
    params:
        analysis=as_json({key: getattr(PARAMS.analysis, key) for key in stages.ANALYSIS_KEYS}),
    resources:
        **job_resources("analyse"),
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/analyse.py"
