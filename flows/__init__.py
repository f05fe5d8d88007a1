"""Prefect flows that compose the stage tasks, and the `coderflow` command line."""
