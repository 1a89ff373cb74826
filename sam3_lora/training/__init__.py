"""The training loop and what it needs: its settings, the one place a trainer is made, the run's state
and checkpoints, its guards and log, keeping methods (distillation), loss, optimizers over named
parameters and schedules, loggers, DDP."""
