"""Pipeline stages: each sub-package holds pure modules and one thin Prefect task module."""
