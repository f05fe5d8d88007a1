"""Packaging: the root folders coderflow/, flows/, tasks/ and storage/ install as coderflow, coderflow.flows,
coderflow.tasks and coderflow.storage, each with every subpackage found under it (the rest is in pyproject.toml)."""

from setuptools import find_namespace_packages, setup

FOLDERS = {
    "coderflow": "coderflow",
    "coderflow.flows": "flows",
    "coderflow.tasks": "tasks",
    "coderflow.storage": "storage",
}


def packages() -> list[str]:
    """Every package (and data folder, such as storage/sql) under the four folders, named as installed (tasks/ingest -> coderflow.tasks.ingest)."""
    return [
        f"{name}.{sub}" if sub else name
        for name, folder in FOLDERS.items()
        for sub in ["", *find_namespace_packages(folder, exclude=["*__pycache__*"])]
    ]


if __name__ == "__main__":
    setup(package_dir=FOLDERS, packages=packages())
