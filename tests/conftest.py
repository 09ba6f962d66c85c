"""Shared pytest fixtures, and `config_module`, which loads an experiment config file."""
import importlib.util
import os
import types
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_module(name: str, configs: Path = CONFIGS) -> types.ModuleType:
    """The experiment config file ``configs/<name>.py``, loaded by its path as ``--config=`` loads it
    (``configs/`` is no package)."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", configs / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets: ``$CDL_DATA_DIR``, else ``shared/datasets`` beside the repository."""
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return Path(os.environ.get("CDL_DATA_DIR") or default)
