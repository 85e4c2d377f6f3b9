"""Analyses of pretrained models (decoder attention within and between frames)."""
