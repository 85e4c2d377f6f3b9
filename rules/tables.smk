# The paper's tables, regenerated from the per-cell result files alone.


rule table_pretraining:
    input:
        **table_inputs("pretraining"),
    output:
        csv=layout.table_csv("pretraining"),
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
        csv=layout.table_csv("datasources"),
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
        csv=layout.table_csv("attention"),
        markdown=layout.table_markdown("attention"),
        layers=layout.ATTENTION_LAYERS,
        plot=layout.ATTENTION_PLOT,
    log:
        layout.log_path("tables", "attention"),
    params:
        cells=as_json([c.name for c in layout.table_cells(PARAMS, "attention")]),
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/table.py"
