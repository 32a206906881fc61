"""Training: the trainer (nnU-Net-style hooks), learning-rate schedule, DDP helpers and logging."""

from .trainer import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer"]
