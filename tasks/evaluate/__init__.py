"""Evaluation: classification metrics from predictions."""
