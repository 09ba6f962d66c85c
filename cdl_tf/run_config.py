"""A finished run's config as written to its ``config.json``, read back.

Fields of the training config (``configs/common.py``) added after runs were first written are
absent from an older run's ``config.json`` and mean the values in `LATER_FIELDS`; every reader
fills them in, so an older and a newer run of one recipe read alike.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping

LATER_FIELDS: Dict[str, Any] = {
    "final_kappa": 0.0,
    "split_at": "",
    "augment": "auto",
    "validation_size": 0,  # older runs held out nothing: they trained on every training image
}


def with_later_fields(config: Mapping[str, Any]) -> Dict[str, Any]:
    """``config`` (a run's ``config.json``) with each field of `LATER_FIELDS` it lacks at its value there."""
    return {**LATER_FIELDS, **config}


def read_run_config(workdir: str):
    """The ``ml_collections.ConfigDict`` of the run in ``workdir`` (`with_later_fields`)."""
    import ml_collections

    with open(os.path.join(workdir, "config.json")) as f:
        return ml_collections.ConfigDict(with_later_fields(json.load(f)))
