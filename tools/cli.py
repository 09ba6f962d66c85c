"""Start-up of the command-line tools: TensorFlow loads quietly unless ``-v``/``--verbosity`` is given.

When it loads, TensorFlow prints start-up lines (oneDNN, CUDA probing, CPU features), some
of them before any log level applies. By default the tools load it with the process's
stderr silenced, its C++ log limited to fatal errors (``TF_CPP_MIN_LOG_LEVEL=3`` unless the
environment sets it), Python-side TensorFlow and absl messages below ERROR dropped and
TensorFlow's Python warnings ignored. absl's ``-v N`` / ``--verbosity=N`` (-1 warnings,
0 info, 1 and up debug) shows them again, the C++ log at the same level (``N >= 1`` also
sets ``TF_CPP_MAX_VLOG_LEVEL=N``).

The tools import TensorFlow only inside ``main``, after this start-up.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any, Callable, Iterator, List

from absl import app, flags, logging

_TENSORFLOW_MODULES = r"(tensorflow|tf_keras|tensorflow_model_optimization)(\.|$)"


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 points to the null device within the context (native writes included)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def start_tensorflow(verbosity: int | None) -> None:
    """Import TensorFlow quietly (``verbosity=None``) or with its logs at absl ``verbosity``."""
    if verbosity is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        logging.set_verbosity(logging.ERROR)
        warnings.filterwarnings("ignore", module=_TENSORFLOW_MODULES)
        with _stderr_silenced():
            import tensorflow  # noqa: F401
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(min(3, max(0, -verbosity)))
    if verbosity > 0:
        os.environ["TF_CPP_MAX_VLOG_LEVEL"] = str(verbosity)
    import tensorflow  # noqa: F401


def run(main: Callable[[List[str]], Any]) -> None:
    """`absl.app.run(main)`, TensorFlow loaded as ``-v``/``--verbosity`` says before ``main`` runs."""

    def started(argv: List[str]) -> Any:
        verbosity = flags.FLAGS["verbosity"]
        start_tensorflow(verbosity.value if verbosity.present else None)
        return main(argv)

    app.run(started)
