"""Chunked file hashing with a per-process memo, and checksum checks that raise `DatasetError`."""
from __future__ import annotations

import hashlib
from pathlib import Path

from cdl_tf.data.errors import DatasetError

_CHUNK = 1 << 20
# (algorithm, resolved path, size, mtime_ns) -> hex digest.
_DIGESTS: dict[tuple[str, str, int, int], str] = {}


def file_key(path: Path) -> tuple[str, int, int]:
    """``(resolved path, size, mtime_ns)``: identifies a file's contents for memoisation."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of ``path``, hashed in chunks and memoised by (path, size, mtime)."""
    key = (algorithm, *file_key(path))
    if key not in _DIGESTS:
        digest = hashlib.new(algorithm)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _require_file(path: Path, how_to_obtain: str) -> None:
    """Raise `DatasetError` naming ``path`` if it is not a file."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found. {how_to_obtain}")


def _md5_error(path: Path, expected: str, actual: str, how_to_obtain: str) -> DatasetError:
    return DatasetError(
        f"{path}: MD5 checksum mismatch: expected {expected}, got {actual}; the file is "
        f"corrupted or not the original. {how_to_obtain}"
    )


def check_md5(path: Path, expected: str, how_to_obtain: str) -> None:
    """Raise `DatasetError` if ``path`` is missing or its MD5 is not ``expected``."""
    _require_file(path, how_to_obtain)
    actual = file_digest(path)
    if actual != expected:
        raise _md5_error(path, expected, actual, how_to_obtain)


def read_verified(path: Path, expected_md5: str, how_to_obtain: str) -> bytearray:
    """The bytes of ``path``, after checking that exactly these bytes have MD5 ``expected_md5``.

    Not memoised: the returned bytes themselves are hashed, so what the caller
    parses (e.g. unpickles) is what was verified, even if the file changes.
    """
    _require_file(path, how_to_obtain)
    digest = hashlib.md5()
    data = bytearray()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
            data += chunk
    if digest.hexdigest() != expected_md5:
        raise _md5_error(path, expected_md5, digest.hexdigest(), how_to_obtain)
    return data
