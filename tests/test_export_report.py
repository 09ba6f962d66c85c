"""ExportReport: export.json round trip, files of earlier versions, clear errors for bad fields."""
import copy
import json
import re

import pytest

from cdl_tf.export_report import (
    BitsPerWeight,
    ExportAccuracy,
    ExportBytes,
    ExportReport,
    ExportReportError,
    KernelAccuracy,
)
from cdl_tf.results import Point, result_row

# export.json as cdl-export wrote it before model_float.tflite and the extra kernel sets were scored.
OLDER_CDL_EXPORT = {
    "workdir": "/runs/lenet5", "quantized_weights": 430500, "float_values": 1090, "int8_io": False,
    "bytes": {"tflite_float": 1727528, "tflite_int8": 443424, "cdlz_ans": 2610, "cdlz_huffman": 3004,
              "entropy_bound_quantized": 2301.5, "float32_weights": 1726360},
    "bits_per_weight": {"entropy": 0.0428, "ans_payload": 0.0437, "huffman_payload": 0.0512,
                        "cdlz_ans_total": 0.0485},
    "test_examples": 1000,
    "accuracy": {"keras_q_u": 0.986, "tflite_int8": 0.985, "top1_agreement": 0.997},
}


def _cdl_report() -> ExportReport:
    return ExportReport(
        workdir="/runs/lenet5", quantized_weights=430500, float_values=1090, int8_io=True, test_examples=1000,
        bytes=ExportBytes(float32_weights=1726360, tflite_float=1727528, tflite_int8=443424, cdlz_ans=2610,
                          cdlz_huffman=3004, entropy_bound_quantized=2301.5),
        bits_per_weight=BitsPerWeight(entropy=0.0428, ans_payload=0.0437, cdlz_ans_total=0.0485,
                                      huffman_payload=0.0512),
        accuracy=ExportAccuracy(tflite_int8=0.985, keras_q_u=0.986, top1_agreement=0.997, tflite_float=0.984,
                                kernels={"builtin": KernelAccuracy(0.983, 0.995),
                                         "reference": KernelAccuracy(0.982, 0.994)}),
    )


def test_cdl_report_round_trips_through_export_json(tmp_path):
    report = _cdl_report()
    report.write(str(tmp_path))
    on_disk = json.loads((tmp_path / "export.json").read_text())
    assert on_disk == report.to_json()
    assert on_disk["accuracy"] == {"tflite_int8": 0.985, "keras_q_u": 0.986, "top1_agreement": 0.997,
                                   "tflite_float": 0.984, "tflite_int8_builtin": 0.983,
                                   "top1_agreement_builtin": 0.995, "tflite_int8_reference": 0.982,
                                   "top1_agreement_reference": 0.994}
    assert "tensors" not in on_disk and "source" not in on_disk  # unset fields are left out
    assert ExportReport.read(str(tmp_path)) == report


def test_baseline_and_float_reports_round_trip(tmp_path):
    ptq = ExportReport(
        workdir="/bench/ptq8", quantized_weights=266200, float_values=410, test_examples=500,
        tensors={"dense/MatMul": (300, 784), "dense/bias": (300,)}, convert_time_s=3.5, source="/bench/float",
        bytes=ExportBytes(float32_weights=1066440, tflite_int8=270000, cdlz_ans=150000, entropy_bound_quantized=1.5e5),
        bits_per_weight=BitsPerWeight(entropy=4.4, ans_payload=4.45, cdlz_ans_total=4.5),
        accuracy=ExportAccuracy(tflite_int8=0.97),
    )
    data = json.loads(json.dumps(ptq.to_json()))
    assert data["tensors"] == {"dense/MatMul": [300, 784], "dense/bias": [300]}
    assert ExportReport.from_json(data) == ptq
    floats = ExportReport(workdir="/bench/float", bytes=ExportBytes(float32_weights=1066440))
    floats.write(str(tmp_path))
    assert json.loads((tmp_path / "export.json").read_text()) == {
        "workdir": "/bench/float", "bytes": {"float32_weights": 1066440}}
    assert ExportReport.read(str(tmp_path)) == floats


def test_export_json_of_an_earlier_version_reads(tmp_path):
    (tmp_path / "export.json").write_text(json.dumps(OLDER_CDL_EXPORT))
    report = ExportReport.read(str(tmp_path))
    assert report.accuracy.tflite_float is None and report.accuracy.kernels == {}
    assert (report.accuracy.tflite_int8, report.bytes.cdlz_ans, report.bits_per_weight.huffman_payload) == (
        0.985, 2610, 0.0512)
    assert report.to_json() == OLDER_CDL_EXPORT  # nothing is added when it is written again


_DELETE = object()


def _with(path: str, value):
    """`OLDER_CDL_EXPORT` with the dotted field ``path`` set to ``value`` (or deleted)."""
    data = copy.deepcopy(OLDER_CDL_EXPORT)
    *parents, key = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[key]
    else:
        node[key] = value
    return data


@pytest.mark.parametrize("path, value, message", [
    ("bytes.cdlz_ans", "2610", r"bytes\.cdlz_ans must be an integer, got '2610'"),
    ("quantized_weights", True, r"quantized_weights must be an integer, got True"),
    ("accuracy.tflite_int8", [0.9], r"accuracy\.tflite_int8 must be a number, got \[0\.9\]"),
    ("int8_io", 0, r"int8_io must be true or false, got 0"),
    ("workdir", 7, r"workdir must be a string, got 7"),
    ("tensors", {"w": [3, "4"]}, r"tensors\.w\[1\] must be an integer, got '4'"),
    ("bits_per_weight", 0.04, r"bits_per_weight must be a JSON object, got 0\.04"),
    ("bytes.cdlz_ans_bytes", 1, r"unknown field\(s\) \['bytes\.cdlz_ans_bytes'\]"),
    ("accuracy_int8", 0.9, r"unknown field\(s\) \['accuracy_int8'\]"),
    ("bytes.float32_weights", _DELETE, r"missing field 'bytes\.float32_weights'"),
    ("workdir", _DELETE, r"missing field 'workdir'"),
    ("accuracy.tflite_int8_builtin", 0.9, r"missing field 'accuracy\.top1_agreement_builtin'"),
    ("accuracy.top1_agreement", "high", r"accuracy\.top1_agreement must be a number, got 'high'"),
])
def test_bad_field_is_named(tmp_path, path, value, message):
    (tmp_path / "export.json").write_text(json.dumps(_with(path, value)))
    with pytest.raises(ExportReportError, match=f"^{re.escape(str(tmp_path / 'export.json'))}: {message}"):
        ExportReport.read(str(tmp_path))


def test_row_of_a_coded_point_needs_its_coded_sizes(tmp_path):
    (tmp_path / "export").mkdir()
    ExportReport(workdir=str(tmp_path), bytes=ExportBytes(float32_weights=1000)).write(str(tmp_path / "export"))
    (tmp_path / "metrics.json").write_text(json.dumps({"test_accuracy": 0.9}))
    (tmp_path / "config.json").write_text(json.dumps({"seed": 0}))
    assert result_row(Point("float"), str(tmp_path), 1000)["coded_bytes"] == 1000
    with pytest.raises(ExportReportError, match="has no accuracy, bits_per_weight, bytes.cdlz_ans, bytes.tflite_int8"):
        result_row(Point("tfmot8"), str(tmp_path), 1000)
