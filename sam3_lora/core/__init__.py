"""Foundations every layer uses: where the configs live, device/AMP/seeding, the clean-exit error."""
