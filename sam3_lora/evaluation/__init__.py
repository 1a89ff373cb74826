"""How good a model is on a split: its detections (``detections``), COCO AP (``coco_ap``), the SAM3
paper's SA-Co metrics (``saco``), and the held-out rule training and ``evaluate`` share (``heldout``)."""
