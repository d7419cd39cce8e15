"""hemaseg: instance segmentation of blood cells in smear images with Mask R-CNN."""

__version__ = "0.1.0"
