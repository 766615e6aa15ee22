"""DiscoVLA: discrepancy reduction in vision, language and alignment for parameter-efficient
video-text retrieval (CVPR 2025), as a reproducible pipeline."""

__version__ = "0.1.0"
