"""The data: a dataset's settings, its validation and repair, sam3's dataset and loader over a COCO
split, the toy world's generator, and a dataset prepared once for a command (``prepare``)."""
