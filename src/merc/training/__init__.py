"""One trainer with hooks, training plug-ins and multi-seed experiment running."""

from merc.training.trainer import TrainConfig, Trainer, seed_everything

__all__ = ["TrainConfig", "Trainer", "seed_everything"]
