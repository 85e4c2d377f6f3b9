"""Launching pretraining cells on SLURM or locally through submitit."""
