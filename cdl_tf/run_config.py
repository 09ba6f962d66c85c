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
    "cdl.activation_count_sample": 0,  # exact counts
}


def with_later_fields(config: Mapping[str, Any]) -> Dict[str, Any]:
    """``config`` (a run's ``config.json``) with each field of `LATER_FIELDS` it lacks at its value
    there; a dotted name is a field of a section (``cdl.X``), filled in where the section exists."""
    config = json.loads(json.dumps(config))  # a deep copy, whatever mappings it holds
    for name, value in LATER_FIELDS.items():
        *sections, field = name.split(".")
        node = config
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(field, value)
    return config


def read_run_config(workdir: str):
    """The ``ml_collections.ConfigDict`` of the run in ``workdir`` (`with_later_fields`)."""
    import ml_collections

    with open(os.path.join(workdir, "config.json")) as f:
        return ml_collections.ConfigDict(with_later_fields(json.load(f)))
