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
        reconstruction=report(
            layout.CELL_RECONSTRUCTION,
            caption="report/reconstruction.rst",
            category="2 Analysis",
            subcategory="{source}/{method}_ep{epochs}",
        ),
        temporal_matching=report(
            layout.CELL_TEMPORAL_MATCHING,
            caption="report/temporal_matching.rst",
            category="2 Analysis",
            subcategory="{source}/{method}_ep{epochs}",
        ),
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


# The seeded attention study: TwinMAE and DropMAE per attention_study setting and seed, trained in
# this job (its runs under layout.ATTENTION_STUDY_RUNS resume after an interruption) and measured on
# held-out pairs, with launcher.analyse's resources. Not part of `all`:
#   snakemake --profile profiles/local results/attention_study/summary.csv \
#       --configfile config/demo.yaml config/attention_study_demo.yaml
from dropmae.analysis.attention_study import STUDY_PRETRAIN_KEYS


rule attention_study:
    input:
        manifest=layout.frames_manifest(PARAMS, layout.attention_study_source(PARAMS)),
    output:
        **layout.attention_study_outputs(),
    log:
        layout.log_path("attention_study", "study"),
    params:
        study=as_json(
            {
                "attention_study": PARAMS.attention_study,
                "model": PARAMS.model,
                "pretrain": {key: getattr(PARAMS.pretrain, key) for key in STUDY_PRETRAIN_KEYS},
            }
        ),
    resources:
        **job_resources("analyse"),
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/attention_study.py"
