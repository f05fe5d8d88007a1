"""Training-free few-shot classification: support sampling (sampling.py), method maths (methods.py), the method
registry (scorers.py) and the Prefect tasks (task.py)."""
