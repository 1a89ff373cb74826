"""The training loop and what it needs: its settings, the tuning strategy (LoRA or full), checkpoints,
loss, optimizer and schedules, loggers, DDP."""
