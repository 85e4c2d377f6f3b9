"""DropTrack: the one-stream tracker fine-tuned from a DropMAE checkpoint, its benchmark
readers, inference and official-protocol evaluation (the demo benchmark: :mod:`dropmae.demo.benchmark`)."""
