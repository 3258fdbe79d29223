"""The registry of raw data files shipped in the repository's ``data/`` folder.

Every file is listed with its sha256. :func:`data_path` finds the file, checks the checksum and
fails with a :class:`~mtlc.errors.DataFileError` that names the file and how to restore it. A
file whose (path, size, mtime) was verified once is not hashed again, neither in the same process
(memory) nor in later ones (a small stamp file in the cache directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from mtlc.errors import DataFileError

# name (path relative to data/) -> (sha256, source) ; the source says where to restore it from.
_DEEPDTA = "hkmztrk/DeepDTA@a546a8433a6822e958f36171c4356ad6f414d623"
REGISTRY: dict[str, tuple[str, str]] = {
    "kiba/kiba_full_long.csv.gz": (
        "b090afa5be4f803b6e18e3ed58f68f43dfc81d239b1238e8230e3989947560c1",
        "derived from cran/timma@60dfa54130fe15bd376cbfbf6705036dbcda9b8d data/kiba.rda "
        "(see data/README.md)",
    ),
    "kiba/ligands_iso.txt": (
        "b141f83ca38af4bf53c6bb70cd466e8bdf4fd175d52102ebc41f15a986df9012",
        f"{_DEEPDTA} data/kiba/ligands_iso.txt",
    ),
    "kiba/drug_info.csv": (
        "660a09d64d28e27143db117cd5b8b868801209e3996e4e351dcabc8ccc38c7e6",
        "simonfqy/PADME@e01c592cc06c4de04b3ed6db35da5af5ff7f863f KIBA_data/drug_info.csv",
    ),
    "kinase200/kinase200_DGBC.csv.gz": (
        "ba3ef1abd6754f6ee7854d1ecbbe5c03b7ef612a103d509c6aa117f1703f4df1",
        "sohviluukkonen/kinase-modelling@16d34678a27e00a0806872c8cbbd91ff74ed1a97 "
        "data/datasets/kinase200_DGBC.csv.gz",
    ),
    "davis/ligands_iso.txt": (
        "58b3cd168ed12962eb856e4e4e5dab1abbd42d6c0912eed2b9987bf578c7fafd",
        f"{_DEEPDTA} data/davis/ligands_iso.txt",
    ),
    "davis/drug-target_interaction_affinities_Kd__Davis_et_al.2011v1.txt": (
        "e2c3d003d49aff61f70be24feafd8d084b0df9404d919338088855828e252d88",
        f"{_DEEPDTA} data/davis/drug-target_interaction_affinities_Kd__Davis_et_al.2011v1.txt",
    ),
    "davis/proteins.txt": (
        "187cedeee10cd3b58af915a2861a5ed0c4ff42a2d728f4dea5e0b47e3d75b291",
        f"{_DEEPDTA} data/davis/proteins.txt",
    ),
}

# (resolved path, size, mtime_ns) of files verified in this process
_VERIFIED: set[tuple[str, int, int]] = set()


def data_dir() -> Path:
    """The data folder: ``$MTLC_DATA_DIR`` if set, else ``data/`` at the repository root."""
    env = os.environ.get("MTLC_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data"


def cache_dir() -> Path:
    """Cache folder for derived artefacts: ``$MTLC_CACHE_DIR`` or ``~/.cache/mtlc``."""
    env = os.environ.get("MTLC_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mtlc"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (no torn files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stamp_path() -> Path:
    return cache_dir() / "verified_files.json"


def _load_stamps() -> dict[str, list]:
    try:
        return json.loads(_stamp_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_stamp(key: str, stamp: list) -> None:
    try:
        stamps = _load_stamps()
        stamps[key] = stamp
        atomic_write_bytes(_stamp_path(), json.dumps(stamps, indent=0).encode())
    except OSError:  # a read-only cache must not stop a load: we just hash again next time
        pass


def _restore_hint(name: str, source: str) -> str:
    return (
        f"restore it with `git checkout -- data/{name}` in the repository, or copy it unchanged "
        f"from {source}; or point MTLC_DATA_DIR at a folder that holds {name}"
    )


def data_path(name: str, *, verify: bool = True) -> Path:
    """Path of a registered data file, checked against its sha256.

    Parameters
    ----------
    name:
        Path relative to the data folder, e.g. ``"kiba/kiba_full_long.csv.gz"``.
    verify:
        Check the sha256 (skipped when the same path, size and mtime were verified before).

    Raises
    ------
    DataFileError
        The name is not registered, the file is missing, or its checksum does not match.
    """
    if name not in REGISTRY:
        raise DataFileError(
            f"unknown data file {name!r}; registered files: {', '.join(sorted(REGISTRY))}"
        )
    sha, source = REGISTRY[name]
    path = data_dir() / name
    if not path.is_file():
        raise DataFileError(f"data file {path} is missing; {_restore_hint(name, source)}")
    if not verify:
        return path
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return path
    stamp = [st.st_size, st.st_mtime_ns, sha]
    if _load_stamps().get(key[0]) == stamp:
        _VERIFIED.add(key)
        return path
    got = sha256_file(path)
    if got != sha:
        raise DataFileError(
            f"data file {path} is corrupted or was changed (sha256 {got[:12]}..., expected "
            f"{sha[:12]}...); {_restore_hint(name, source)}"
        )
    _VERIFIED.add(key)
    _save_stamp(key[0], stamp)
    return path
