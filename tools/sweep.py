"""The sweep of ``cdl-bench``: CDL and R-CDL points against the float, 8-bit and uniform-QAT
baselines (methods in `cdl_tf.results`), trained, exported and tabulated.

All points share the base config's model, data and schedule, and its seed unless the sweep
names seeds: then every point runs once per seed. ``ste`` runs at each bit width, ``cdl`` and
``rcdl`` at every bit width x ``lambda_w`` x ``lambda_a``, ``epr`` (`cdl_tf.epr`, weights only) at
every bit width x ``lambda_w``.

Each point is a run directory under the output directory, named from its settings
(``float``, ``ptq8``, ``ste_w4a4``, ``cdl_w4a4_lw0.02_la0.005``, ``cdl_w4a4_lw0.02_la0.005_seed1``, ...),
holding ``metrics.json`` and ``export/export.json``. A point whose directory holds both is read, not rerun, so a sweep
resumes where it stopped and runs made with ``cdl-train`` + ``cdl-export`` are reused.
CDL and ``ste`` points are exported by `tflite_export.export.export_workdir`, the baselines by
`tflite_export.baselines`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from cdl_tf.export_report import EXPORT_FILE
from cdl_tf.lineage import INERT_FIELDS, lineage_group
from cdl_tf.results import METHODS, BenchmarkError, Point, float32_bytes, result_row, write_results
from cdl_tf.run_config import read_run_config, with_later_fields
from tflite_export import baselines


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Bit widths and rate weights swept for ``cdl``/``rcdl``; ``ste`` runs at every bit width.

    ``activation_bits=0`` quantizes activations at the weights' bit width. ``seeds``: every
    point runs once per seed (empty: once, with the base config's seed).
    """

    bits: Tuple[int, ...] = (2, 4, 8)
    lambda_w: Tuple[float, ...] = (0.005, 0.02, 0.05)
    lambda_a: Tuple[float, ...] = (0.005,)
    activation_bits: int = 0
    methods: Tuple[str, ...] = METHODS
    seeds: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise BenchmarkError(f"unknown methods {unknown}; known: {METHODS}")
        if "ptq8" in self.methods and "float" not in self.methods:
            raise BenchmarkError("ptq8 quantizes the float run's model: add 'float' to the methods")
        for field in ("bits", "lambda_w", "lambda_a"):
            if not getattr(self, field):
                raise BenchmarkError(f"sweep.{field} is empty")
        if any(not 1 <= b <= 8 for b in (*self.bits, self.activation_bits or 1)):
            raise BenchmarkError(f"bit widths must be in [1, 8], got {self.bits}, activations {self.activation_bits}")
        if any(v < 0 for v in (*self.lambda_w, *self.lambda_a)):
            raise BenchmarkError("lambdas must be >= 0")
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise BenchmarkError(f"seeds must be distinct and >= 0, got {self.seeds}")

    def points(self) -> List[Point]:
        """Points in run order: baselines first (``ptq8`` after ``float``), then the sweeps; each
        point under every seed in turn."""
        out = [Point(m) for m in ("float", "tfmot8", "ptq8") if m in self.methods]
        for b in self.bits:
            a = self.activation_bits or b
            if "ste" in self.methods:
                out.append(Point("ste", b, a))
            for method in ("cdl", "rcdl"):
                if method in self.methods:
                    out += [Point(method, b, a, lw, la) for lw in self.lambda_w for la in self.lambda_a]
            if "epr" in self.methods:
                out += [Point("epr", b, a, lw) for lw in self.lambda_w]
        return [dataclasses.replace(p, seed=s) for p in out for s in (self.seeds or (None,))]


QUICK_SWEEP = Sweep(bits=(4,), lambda_w=(0.01, 0.05), lambda_a=(0.005,))


def quick_config(config, overrides: Optional[Mapping[str, Any]] = None):
    """``config`` reduced to runs of about a minute (8192 training images, 2 epochs), then
    ``overrides`` (flat ``{"a.b": value}``, e.g. the command line's) applied again."""
    c = config.copy_and_resolve_references()
    c.train_subset = min(c.train_subset or 8192, 8192)
    c.test_subset = min(c.test_subset or 2000, 2000)
    c.epochs = min(c.epochs, 2)
    c.rate_warmup_epochs = min(c.rate_warmup_epochs, c.epochs - 1)
    c.bn_reestimate_steps = min(c.bn_reestimate_steps, 10)
    c.optimizer.warmup_epochs = 0
    c.update_from_flattened_dict(dict(overrides or {}))
    return c


def point_config(config, point: Point):
    """The training config of ``point`` (a copy of the base ``config``)."""
    c = config.copy_and_resolve_references()
    c.init_from = ""
    c.mode = "float" if point.method == "ptq8" else point.method
    if point.seed is not None:
        c.seed = point.seed
    if point.weight_bits is not None:
        c.cdl.weight_bits = point.weight_bits
        c.cdl.activation_bits = point.activation_bits
        c.cdl.lambda_w = point.lambda_w
        c.cdl.lambda_a = point.lambda_a
    if point.method == "epr":
        c.cdl.quantize_activations = False
    return c


def _check_existing(config, workdir: str) -> None:
    """Raise unless the run in ``workdir`` (if any) was made with ``config``.

    The saved config reads with `with_later_fields`; other fields absent from either config are not compared.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = with_later_fields(json.load(f))
    diff = sorted(_diff(saved, json.loads(config.to_json())))
    if diff:
        raise BenchmarkError(f"{workdir} holds a run with another config (fields {diff}); "
                             "delete it or choose another --outdir")


def _diff(a: Dict[str, Any], b: Dict[str, Any], prefix: str = "") -> List[str]:
    out = []
    for key in set(a) & set(b):
        if not prefix and key in INERT_FIELDS:
            continue
        x, y = a[key], b[key]
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(prefix + key)
    return out


def _done(workdir: str) -> bool:
    return all(os.path.isfile(os.path.join(workdir, p)) for p in ("metrics.json", os.path.join("export", EXPORT_FILE)))


def _train_and_export(config, workdir: str, reference_bytes: int) -> None:
    """Train the run of ``config`` in ``workdir`` unless done, then export it as its mode requires."""
    from cdl_tf.training import train_and_evaluate
    from tflite_export.export import export_workdir

    if config.mode == "float":
        baselines.run_float(config, workdir, reference_bytes)
    elif config.mode == "tfmot8":
        baselines.run_tfmot8(config, workdir)
    else:
        if not os.path.isfile(os.path.join(workdir, "metrics.json")):
            train_and_evaluate(config, workdir)
        export_workdir(workdir, os.path.join(workdir, "export"))


def run_point(config, point: Point, outdir: str, reference_bytes: Optional[int] = None) -> Dict[str, Any]:
    """Run ``point`` of the base ``config`` in ``outdir/point.name`` unless done; returns its row.

    ``reference_bytes``: the float32 size compression ratios divide (default `float32_bytes`).
    """
    reference_bytes = reference_bytes or float32_bytes(config)
    pc = point_config(config, point)
    workdir = os.path.join(outdir, point.name)
    _check_existing(pc, workdir)
    if not _done(workdir):
        if point.method == "ptq8":
            baselines.run_ptq8(pc, workdir, os.path.join(outdir, Point("float", seed=point.seed).name))
        else:
            _train_and_export(pc, workdir, reference_bytes)
    return {**result_row(point, workdir, reference_bytes), "group": point.group}


def run_sweep(config, sweep: Sweep, outdir: str) -> Dict[str, Any]:
    """Run (or resume) every point of ``sweep``; write ``results.json``, ``results.md`` and plots.

    After each point its result and a progress bar over the points (with the sweep's ETA) are printed.
    """
    import tf_keras as keras

    from cdl_tf.training import validate_config

    validate_config(config)
    os.makedirs(outdir, exist_ok=True)
    reference = float32_bytes(config)
    rows = []
    points = sweep.points()
    progress = keras.utils.Progbar(len(points), unit_name="point")
    for done, point in enumerate(points, 1):
        rows.append(run_point(config, point, outdir, reference))
        print(f"[cdl-bench] {point.name}: accuracy {rows[-1]['accuracy']:.4f}, {rows[-1]['coded_kb']:.2f} KB",
              flush=True)
        progress.update(done)
        if done < len(points):
            print(flush=True)  # the bar ends its line only when finished; the next point starts below it
    sweep_fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(sweep).items()}
    return write_results(config, rows, reference, outdir, sweep=sweep_fields)


def tabulate_runs(workdirs: Sequence[str], outdir: str) -> Dict[str, Any]:
    """Results of finished ``cdl-train`` runs of one model, as a sweep's.

    Each run is exported as its method requires (CDL runs through `export_workdir`,
    tfmot8 runs converted and coded) unless it already was; a float run among them
    also gives the post-training int8 point, written to ``outdir/ptq8_<float run's name>``.
    Runs with the same `lineage` form one group of the summary.
    """
    from cdl_tf.training import validate_config

    if not workdirs:
        raise BenchmarkError("no run directories given")
    os.makedirs(outdir, exist_ok=True)
    rows, configs = [], []
    for workdir in workdirs:
        config = read_run_config(workdir)
        validate_config(config)
        if configs and (config.model, config.dataset) != (configs[0].model, configs[0].dataset):
            raise BenchmarkError(f"{workdir} is a {config.model}/{config.dataset} run; the others are "
                                 f"{configs[0].model}/{configs[0].dataset}")
        configs.append(config)
        bits = {} if config.mode in ("float", "tfmot8") else {
            "weight_bits": config.cdl.weight_bits, "activation_bits": config.cdl.activation_bits}
        lambdas = {"lambda_w": config.cdl.lambda_w, "lambda_a": config.cdl.lambda_a} if config.mode in (
            "cdl", "rcdl") else {"lambda_w": config.cdl.lambda_w} if config.mode == "epr" else {}
        point = Point(config.mode, **bits, **lambdas)
        reference = float32_bytes(config)
        if not _done(workdir):
            _train_and_export(config, workdir, reference)
        group = lineage_group(workdir)
        rows.append({**result_row(point, workdir, reference), "group": group})
        if config.mode == "float":
            ptq = os.path.join(outdir, f"ptq8_{os.path.basename(os.path.normpath(workdir))}")
            if not _done(ptq):
                baselines.run_ptq8(config, ptq, workdir)
            rows.append({**result_row(Point("ptq8"), ptq, reference), "group": f"ptq8-{group}"})
        print(f"[cdl-bench] {workdir}: accuracy {rows[-1]['accuracy']:.4f}, {rows[-1]['coded_kb']:.2f} KB", flush=True)
    return write_results(configs[0], rows, float32_bytes(configs[0]), outdir,
                         runs=[os.path.abspath(w) for w in workdirs])
