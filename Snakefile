# The DropMAE experiment DAG: videos -> frames -> pretraining cells -> analysis, tracker and
# segmenter fine-tuning / evaluation, label-propagation probe -> tables.
# params.yaml is the configuration; overlay files come with --configfile (the demo:
# config/demo.yaml). Paths come from dropmae.workflow.layout, shared with dvc.yaml.
from snakemake.utils import min_version

min_version("9.0")


# Read params.yaml with the package first, so a YAML error, an empty file or a mapping of
# something else is reported naming the file (Snakemake's own reading does not name it).
from dropmae.config import ConfigError, read_config_file

try:
    read_config_file("params.yaml")
except ConfigError as error:
    raise ValueError(f"invalid configuration: {error}") from None


configfile: "params.yaml"


# `snakemake --report report.html`: every table and figure marked with report() in rules/*.smk.
report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/analysis.smk"
include: "rules/tracking.smk"
include: "rules/segmentation.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"


rule all:
    default_target: True
    input:
        TABLE_OUTPUTS,
        FIGURE_OUTPUTS,
