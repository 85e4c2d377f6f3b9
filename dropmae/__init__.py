"""DropMAE: pretraining ViTs on frame pairs with adaptive spatial attention dropout."""

__version__ = "0.1.0"
