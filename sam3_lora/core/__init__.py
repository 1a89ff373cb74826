"""Foundations every layer uses: typed settings, where the configs live, device/AMP/seeding, atomic
files, the clean-exit error."""
