"""The packages depend one way: cdl_tf (library) <- tflite_export (TFLite) <- tools (absl apps)."""
import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Above each package: what it must not import. tools/ installs as cdl_tf.tools.
FORBIDDEN = {"cdl_tf": ("tflite_export", "tools", "cdl_tf.tools"), "tflite_export": ("tools", "cdl_tf.tools")}
# Imported inside functions where they are optional or slow to load: TFDS and matplotlib, and
# the datasets (TensorFlow) from the experiment config, which the tools read before TensorFlow starts.
DEFERRED = ("tensorflow_datasets", "matplotlib", "cdl_tf.data")


def _sources(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: pathlib.Path):
    """``(module, line, inside a function)`` of every import in a file."""
    tree = ast.parse(path.read_text())
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in in_function
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module, node.lineno, id(node) in in_function


def _is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package):
    found = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in _sources(package) for module, line, _ in _imports(path)
             if any(_is_under(module, above) for above in FORBIDDEN[package])]
    assert found == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_library_imports_at_module_level(package):
    found = [f"{path.relative_to(ROOT)}:{line} imports {module} inside a function"
             for path in _sources(package) for module, line, inside in _imports(path)
             if inside and not any(_is_under(module, d) for d in DEFERRED)]
    assert found == []


def test_checker_sees_a_forbidden_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    from tflite_export.graph import InferenceGraph\n")
    assert list(_imports(path)) == [("os", 1, False), ("tflite_export.graph", 4, True)]


def test_installed_tools_are_the_tools_directory():
    import cdl_tf.tools.cli

    assert os.path.samefile(os.path.dirname(cdl_tf.tools.cli.__file__), ROOT / "tools")
