"""Workarounds for sam3 0.1.4, each documented where it lives."""
