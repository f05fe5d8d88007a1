"""coderflow: CLIP classification with CODER text-based image representations, run as Prefect flows."""

import os

__version__ = "0.1.0"

# Prefect runs offline here: no analytics, and a start-up timeout that a 2-core machine can meet.
for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # module loggers under `coderflow` (the LLM generator's warnings, say) reach the run's logs in the Prefect UI
    "PREFECT_LOGGING_EXTRA_LOGGERS": "coderflow",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # outside a run (plain library use) they stay local
}.items():
    os.environ.setdefault(_key, _value)
