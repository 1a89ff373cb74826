"""A training run's directory: its file layout, and the tuned model it holds."""
