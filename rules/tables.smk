# The paper's tables, regenerated from the per-cell result files alone.


rule table_pretraining:
    input:
        **table_inputs("pretraining"),
    output:
        csv=report(
            layout.table_csv("pretraining"),
            caption="report/table_pretraining.rst",
            category="6 Tables",
        ),
        markdown=layout.table_markdown("pretraining"),
    log:
        layout.log_path("tables", "pretraining"),
    params:
        cells=as_json([c.name for c in layout.table_cells(PARAMS, "pretraining")]),
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/table.py"


rule table_datasources:
    input:
        **table_inputs("datasources"),
    output:
        csv=report(
            layout.table_csv("datasources"),
            caption="report/table_datasources.rst",
            category="6 Tables",
        ),
        markdown=layout.table_markdown("datasources"),
    log:
        layout.log_path("tables", "datasources"),
    params:
        cells=as_json([c.name for c in layout.table_cells(PARAMS, "datasources")]),
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/table.py"


rule table_attention:
    input:
        metrics=cell_results("attention", layout.CELL_METRICS),
        attention=cell_results("attention", layout.CELL_ATTENTION),
    output:
        csv=report(
            layout.table_csv("attention"),
            caption="report/table_attention.rst",
            category="6 Tables",
        ),
        markdown=layout.table_markdown("attention"),
        layers=layout.ATTENTION_LAYERS,
        plot=report(
            layout.ATTENTION_PLOT,
            caption="report/attention_layers.rst",
            category="2 Analysis",
            subcategory="Attention per layer",
        ),
    log:
        layout.log_path("tables", "attention"),
    params:
        cells=as_json([c.name for c in layout.table_cells(PARAMS, "attention")]),
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/table.py"
