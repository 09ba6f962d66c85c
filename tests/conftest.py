"""Shared pytest fixtures, `config_module`, which loads an experiment config file, and one XLA
compilation cache for the session."""
import importlib.util
import os
import shutil
import tempfile
import types
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
_XLA_CACHE_FLAG = "--tf_xla_persistent_cache_directory="
_created_xla_cache = None


def pytest_configure(config) -> None:
    """Share XLA's compiled kernels among the session's processes: xdist's workers and the tools run
    as subprocesses inherit the environment set here, before any of them starts TensorFlow, and
    reuse the kernels (per alphabet and shape) that another process compiled."""
    global _created_xla_cache
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if _XLA_CACHE_FLAG not in flags:
        _created_xla_cache = tempfile.mkdtemp(prefix="cdl-tf-xla-")
        os.environ["TF_XLA_FLAGS"] = f"{flags} {_XLA_CACHE_FLAG}{_created_xla_cache}".strip()


def pytest_unconfigure(config) -> None:
    if _created_xla_cache:
        shutil.rmtree(_created_xla_cache, ignore_errors=True)


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
