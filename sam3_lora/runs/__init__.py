"""A training run's directory: its file layout, its results.json, and a sweep's runs as one report."""
