"""DropSeg: semi-supervised video object segmentation fine-tuned from a DropMAE checkpoint."""
