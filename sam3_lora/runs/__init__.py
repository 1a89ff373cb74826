"""A training run's directory: its file layout, its results.json, the names that changed since old
run directories were written, and a sweep's runs as one report."""
