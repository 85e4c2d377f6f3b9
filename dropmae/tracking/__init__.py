"""DropTrack: the one-stream tracker fine-tuned from a DropMAE checkpoint, its benchmark
readers, the embedded demo benchmark, inference and official-protocol evaluation."""
