"""What a run's results depend on but its seed: runs of one recipe under other seeds share it.

The benchmark averages runs of one lineage over their seeds (`lineage_group`).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict

from cdl_tf.run_config import with_later_fields

INERT_FIELDS = ("verbose", "data_dir")  # config fields that change no result


def lineage(workdir: str) -> Dict[str, Any]:
    """The config of the run in ``workdir`` (`with_later_fields`) without ``seed`` and `INERT_FIELDS`,
    where the runs it starts from (``init_from``) or learns from (``distill.teacher``) are replaced
    by their own lineages if their directories still exist.

    Runs of one recipe under other seeds, each continuing its own seed's parent, share it.
    """
    with open(os.path.join(workdir, "config.json")) as f:
        config = with_later_fields(json.load(f))
    for key in ("seed", *INERT_FIELDS):
        config.pop(key, None)
    for parent, key in ((config, "init_from"), (config.get("distill") or {}, "teacher")):
        path = parent.get(key)
        if path and os.path.isfile(os.path.join(path, "config.json")):
            parent[key] = lineage(path)
    return config


def lineage_group(workdir: str) -> str:
    """A name of the run's `lineage`: ``lineage-`` and 16 hex digits of its SHA-256."""
    digest = hashlib.sha256(json.dumps(lineage(workdir), sort_keys=True).encode()).hexdigest()
    return f"lineage-{digest[:16]}"
