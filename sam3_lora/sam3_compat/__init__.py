"""Workarounds for sam3 0.1.4, each documented where it lives: building and training without a GPU
(``cpu``), the text encoder's checkpoint recompute (``sdpa_checkpoint``), and NaN predictions named
before they reach scipy's matcher (``matcher``); and where sam3's parts sit (``module_paths``)."""
