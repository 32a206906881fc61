"""Training: the trainer (nnU-Net-style hooks), learning-rate schedule, DDP helpers and logging."""

from .models import MODELS, ModelTrainer
from .trainer import TrainConfig, Trainer

__all__ = ["MODELS", "ModelTrainer", "TrainConfig", "Trainer"]
