"""Fields of a training run's config (``configs/common.py``) added after runs were first written.

An older run's ``config.json`` lacks them and means the values here: validation and the
comparison of runs read such a config with these filled in, so an older and a newer run of
one recipe read alike.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

LATER_FIELDS: Dict[str, Any] = {
    "final_kappa": 0.0,
    "split_at": "",
    "augment": "auto",
}


def later_field(config: Mapping[str, Any], name: str) -> Any:
    """``config[name]`` for a field of `LATER_FIELDS`, its value there if ``config`` lacks it."""
    return config.get(name, LATER_FIELDS[name])


def with_later_fields(config: Mapping[str, Any]) -> Dict[str, Any]:
    """``config`` (a run's ``config.json``) with each field of `LATER_FIELDS` it lacks at its value there."""
    return {**LATER_FIELDS, **config}
