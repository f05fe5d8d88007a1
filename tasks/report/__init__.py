"""Run reports for the Prefect UI: pure table formatting (tables.py) and the artifact tasks (task.py)."""
