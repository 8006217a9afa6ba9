"""Neural network definitions (MONAI building blocks, configured by dataclasses)."""
