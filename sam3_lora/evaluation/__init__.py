"""COCO evaluation of a model on a split (pycocotools)."""
