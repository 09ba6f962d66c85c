"""Shared pytest fixtures."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets: ``$CDL_DATA_DIR``, else ``shared/datasets`` beside the repository."""
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return Path(os.environ.get("CDL_DATA_DIR") or default)
