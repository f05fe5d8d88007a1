"""coderflow: CLIP classification with CODER text-based image representations, run as Prefect flows."""

__version__ = "0.1.0"
