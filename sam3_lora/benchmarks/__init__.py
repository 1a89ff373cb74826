"""The SAM3 paper's transfer benchmarks (ODinW13, RF100-VL): where their files are (``catalog``),
preparing them once (``manifest``), few-shot splits (``few_shot``), stand-in releases for CPU
(``stand_in``) and the table over a benchmark's runs (``table``)."""
