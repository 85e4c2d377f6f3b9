"""The experiment DAG: paths, stage functions and tables shared by Snakemake and DVC."""
