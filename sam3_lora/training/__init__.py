"""The training loop and what it needs: checkpoints, loss, schedules, settings checks, loggers, DDP."""
