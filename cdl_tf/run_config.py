"""A finished run's config as written to its ``config.json``, read back.

Fields of the training config added after runs were first written are absent from an older
run's ``config.json`` and mean the values `ExperimentConfig.later_fields` gives
(`cdl_tf.experiment_config`, where each such field declares its ``older`` value); every reader
fills them in, so an older and a newer run of one recipe read alike.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping

import ml_collections

from cdl_tf.experiment_config import ExperimentConfig


def with_later_fields(config: Mapping[str, Any]) -> Dict[str, Any]:
    """``config`` (a run's ``config.json``) with each later field it lacks at its older value; a
    dotted name is a field of a section (``cdl.X``), filled in where the section exists."""
    config = json.loads(json.dumps(config))  # a deep copy, whatever mappings it holds
    later = json.loads(json.dumps(ExperimentConfig.later_fields()))  # as config.json writes them
    for name, value in later.items():
        *sections, field = name.split(".")
        node = config
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(field, value)
    return config


def read_run_config(workdir: str):
    """The ``ml_collections.ConfigDict`` of the run in ``workdir`` (`with_later_fields`)."""
    with open(os.path.join(workdir, "config.json")) as f:
        return ml_collections.ConfigDict(with_later_fields(json.load(f)))
