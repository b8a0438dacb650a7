"""The persisted index of LISTS of files (harness.data.index.open_listed) and the formats using it.

A warm open of an unchanged list stats the folders holding the files, not the files; a change in
any of those folders (a file added, removed, replaced, a link re-pointed) or, with
``check_sizes``, in a file's size or mtime, checks the list again; a list with a problem is never
served from the index, so the loaders' error messages stay exact.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import index as IX
from harness.data import open_dataset
from harness.errors import DataError
from harness.suite import DatasetSpec


def png(path: Path, value: int = 0, size=(4, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def age(root: Path, seconds: float = 60.0) -> None:
    """Move every directory's mtime into the past (an index built now is then not 'racy')."""
    t = time.time() - seconds
    for d, _, _ in os.walk(root):
        os.utime(d, (t, t))


def replace_file(path: Path, value: int = 200, size=(6, 5)) -> None:
    """Replace ``path`` by a new file (written beside it, renamed over it)."""
    tmp = path.with_name("new." + path.name)
    png(tmp, value, size)
    os.replace(tmp, path)


class StatCounter:
    """Counts os.stat / os.lstat calls (what regular_file_problem, pathlib and realpath use)."""

    def __init__(self, monkeypatch):
        self.stat = self.lstat = 0
        self.paths: list[str] = []
        real_stat, real_lstat = os.stat, os.lstat

        def stat(p, *a, **k):
            self.stat += 1
            self.paths.append(os.fspath(p) if not isinstance(p, int) else str(p))
            return real_stat(p, *a, **k)

        def lstat(p, *a, **k):
            self.lstat += 1
            self.paths.append(os.fspath(p))
            return real_lstat(p, *a, **k)

        monkeypatch.setattr(os, "stat", stat)
        monkeypatch.setattr(os, "lstat", lstat)

    @property
    def total(self) -> int:
        return self.stat + self.lstat


def files_in(root: Path, folders=("a", "b", "c"), per_folder=4) -> list[str]:
    out = []
    for k, d in enumerate(folders):
        for i in range(per_folder):
            png(root / d / f"{i}.png", 30 * k + i)
            out.append(str(root / d / f"{i}.png"))
    return out


# ------------------------------------------------------------------------------ the facility

def test_warm_open_stats_one_per_folder_not_per_file(tmp_path, monkeypatch):
    for per in (3, 40):
        root = tmp_path / f"d{per}"
        paths = files_in(root, per_folder=per)
        age(root)
        cold = IX.open_listed(paths, tmp_path / "idx")
        assert not cold.from_index and not cold.problems
        with monkeypatch.context() as m:
            counter = StatCounter(m)
            warm = IX.open_listed(paths, tmp_path / "idx")
        assert warm.from_index and warm.fingerprint == cold.fingerprint
        assert warm.sizes.tolist() == cold.sizes.tolist() == [os.stat(p).st_size for p in paths]
        assert warm.mtimes.tolist() == [os.stat(p).st_mtime_ns for p in paths]
        # one stat per folder (a, b, c), none per file
        assert (counter.stat, counter.lstat) == (3, 0), counter.paths
        assert not any(p.endswith(".png") for p in counter.paths)


def test_fingerprint_is_path_size_mtime_of_each_file(tmp_path):
    paths = files_in(tmp_path / "d")
    listed = IX.open_listed(paths, tmp_path / "idx")
    st = [os.stat(p) for p in paths]
    assert listed.fingerprint == IX.list_fingerprint(paths, [s.st_size for s in st],
                                                     [s.st_mtime_ns for s in st])
    # the same files listed in another order, or under another spelling, are another list
    assert IX.open_listed(paths[::-1], tmp_path / "idx").fingerprint != listed.fingerprint


@pytest.mark.parametrize("change", ["add", "remove", "replace", "rename"])
def test_a_change_in_a_listed_folder_is_seen(tmp_path, change):
    root = tmp_path / "d"
    paths = files_in(root)
    age(root)
    cold = IX.open_listed(paths, tmp_path / "idx")
    assert IX.open_listed(paths, tmp_path / "idx").from_index
    target = root / "b" / "1.png"
    if change == "add":
        png(root / "b" / "extra.png")            # not listed: same answers, checked again
    elif change == "remove":
        target.unlink()
    elif change == "replace":
        replace_file(target)
    else:
        target.rename(root / "b" / "moved.png")
        png(target, 99, size=(7, 7))             # another file under the listed name
    after = IX.open_listed(paths, tmp_path / "idx")
    assert not after.from_index
    if change == "add":
        assert after.fingerprint == cold.fingerprint and not after.problems
    elif change == "remove":
        assert after.problems == {paths.index(str(target)): "does not exist"}
    else:
        assert after.fingerprint != cold.fingerprint and not after.problems


def test_racy_index_is_rebuilt(tmp_path):
    root = tmp_path / "d"
    paths = files_in(root)                       # folders just written: mtimes are 'now'
    assert not IX.open_listed(paths, tmp_path / "idx").from_index
    assert not IX.open_listed(paths, tmp_path / "idx").from_index   # written, but not trusted
    age(root)
    assert not IX.open_listed(paths, tmp_path / "idx").from_index   # rebuilt after the change
    assert IX.open_listed(paths, tmp_path / "idx").from_index


def test_in_place_rewrite_is_seen_with_check_sizes_only(tmp_path):
    root = tmp_path / "d"
    paths = files_in(root)
    age(root)
    f = root / "a" / "2.png"
    cold = IX.open_listed(paths, tmp_path / "idx")
    d = os.stat(f.parent)
    png(f, 255, size=(9, 9))                     # rewritten in place: new size, same inode
    os.utime(f.parent, ns=(d.st_atime_ns, d.st_mtime_ns))   # as if the folder had not changed
    blind = IX.open_listed(paths, tmp_path / "idx")
    assert blind.from_index and blind.fingerprint == cold.fingerprint   # documented blind spot
    seen = IX.open_listed(paths, tmp_path / "idx", check_sizes=True)
    assert not seen.from_index and seen.fingerprint != cold.fingerprint
    assert seen.sizes[paths.index(str(f))] == f.stat().st_size


def test_check_sizes_stats_every_file_and_reuses_an_unchanged_list(tmp_path, monkeypatch):
    root = tmp_path / "d"
    paths = files_in(root)
    age(root)
    IX.open_listed(paths, tmp_path / "idx")
    with monkeypatch.context() as m:
        counter = StatCounter(m)
        warm = IX.open_listed(paths, tmp_path / "idx", check_sizes=True)
    assert warm.from_index and counter.stat == 3 + len(paths) and counter.lstat == 0


def test_a_list_with_a_problem_is_checked_on_every_open(tmp_path, monkeypatch):
    root = tmp_path / "d"
    paths = files_in(root)
    age(root)
    assert not IX.open_listed(paths, tmp_path / "idx").from_index
    written = list((tmp_path / "idx" / IX.SUBDIR).glob("list-*.npz"))
    assert len(written) == 1
    os.mkfifo(root / "c" / "1.png.fifo")
    os.replace(root / "c" / "1.png.fifo", root / "c" / "1.png")
    (root / "a" / "0.png").unlink()
    age(root)
    first = IX.open_listed(paths, tmp_path / "idx")
    assert first.problems == {0: "does not exist", 9: "not a regular file (a FIFO)"}
    assert first.first_problem() == (0, "does not exist") and first.missing() == [0]
    assert not written[0].exists()               # the old index is gone with the change
    with monkeypatch.context() as m:
        counter = StatCounter(m)
        again = IX.open_listed(paths, tmp_path / "idx")
    assert not again.from_index and again.problems == first.problems
    assert counter.lstat == len(paths)           # every file checked again
    png(root / "a" / "0.png")
    (root / "c" / "1.png").unlink()
    png(root / "c" / "1.png")
    fixed = IX.open_listed(paths, tmp_path / "idx")
    assert not fixed.problems and not fixed.from_index


def test_links_are_followed_and_their_folders_watched(tmp_path):
    store, listed_dir = tmp_path / "store", tmp_path / "listed"
    png(store / "x.png", 10)
    png(store / "y.png", 20, size=(5, 5))
    listed_dir.mkdir()
    (listed_dir / "x.png").symlink_to(store / "x.png")
    paths = [str(listed_dir / "x.png")]
    age(tmp_path)
    cold = IX.open_listed(paths, tmp_path / "idx")
    assert cold.sizes[0] == (store / "x.png").stat().st_size
    assert cold.realpaths() == [os.path.realpath(paths[0])] == [str(store.resolve() / "x.png")]
    warm = IX.open_listed(paths, tmp_path / "idx")
    assert warm.from_index and warm.realpaths() == cold.realpaths()
    replace_file(store / "x.png", 77, size=(8, 8))   # the target replaced, in the target's folder
    target_changed = IX.open_listed(paths, tmp_path / "idx")
    assert not target_changed.from_index and target_changed.fingerprint != cold.fingerprint
    age(tmp_path)
    IX.open_listed(paths, tmp_path / "idx")
    tmp_link = listed_dir / "tmp.link"
    tmp_link.symlink_to(store / "y.png")
    os.replace(tmp_link, listed_dir / "x.png")       # the link re-pointed
    repointed = IX.open_listed(paths, tmp_path / "idx")
    assert not repointed.from_index and repointed.sizes[0] == (store / "y.png").stat().st_size
    assert repointed.realpaths() == [str(store.resolve() / "y.png")]


def test_a_listed_folder_that_is_a_link_re_pointed_is_seen(tmp_path):
    v1 = tmp_path / "v1"
    files_in(v1, folders=("a",))
    shutil.copytree(v1, tmp_path / "v2", copy_function=shutil.copy2)   # same names, sizes, mtimes
    (tmp_path / "cur").symlink_to("v1")
    paths = [str(tmp_path / "cur" / "a" / f"{i}.png") for i in range(4)]
    age(tmp_path)
    IX.open_listed(paths, tmp_path / "idx")
    assert IX.open_listed(paths, tmp_path / "idx").from_index
    (tmp_path / "new").symlink_to("v2")
    os.replace(tmp_path / "new", tmp_path / "cur")   # cur/a is now another folder
    t = time.time() - 60
    os.utime(tmp_path / "v2" / "a", (t, t))
    after = IX.open_listed(paths, tmp_path / "idx")
    assert not after.from_index                       # its device/inode changed
    assert after.realpaths()[0] == str((tmp_path / "v2" / "a" / "0.png").resolve())


def test_relative_paths_are_keyed_with_the_working_directory(tmp_path, monkeypatch):
    for d, n in (("one", 10), ("two", 20)):
        (tmp_path / d / "a").mkdir(parents=True)
        (tmp_path / d / "a" / "0.png").write_bytes(b"x" * n)
    age(tmp_path)
    monkeypatch.chdir(tmp_path / "one")
    a = IX.open_listed(["a/0.png"], tmp_path / "idx")
    assert IX.open_listed(["a/0.png"], tmp_path / "idx").from_index
    monkeypatch.chdir(tmp_path / "two")
    b = IX.open_listed(["a/0.png"], tmp_path / "idx")
    assert not b.from_index and (a.sizes[0], b.sizes[0]) == (10, 20)


def test_unreadable_index_is_rebuilt_and_unwritable_cache_used_uncached(tmp_path, caplog):
    root = tmp_path / "d"
    paths = files_in(root)
    age(root)
    blocker = tmp_path / "file"
    blocker.write_text("x")                      # index_dir is a file: nothing can be written
    with caplog.at_level(logging.WARNING, logger="harness.data"):
        ro = IX.open_listed(paths, blocker)
    assert not ro.problems and ro.fingerprint and "not written" in caplog.text
    good = IX.open_listed(paths, tmp_path / "idx")
    for p in (tmp_path / "idx" / IX.SUBDIR).glob("list-*.npz"):
        p.write_bytes(b"not a zip file")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness.data"):
        again = IX.open_listed(paths, tmp_path / "idx")
    assert not again.from_index and again.fingerprint == good.fingerprint
    assert "unreadable" in caplog.text
    assert IX.open_listed(paths, tmp_path / "idx").from_index      # rewritten


def test_foreign_index_is_not_used(tmp_path):
    root = tmp_path / "d"
    paths = files_in(root)
    age(root)
    IX.open_listed(paths, tmp_path / "idx")
    (index_file,) = (tmp_path / "idx" / IX.SUBDIR).glob("list-*.npz")
    with np.load(index_file) as z:
        members = {k: z[k] for k in z.files}
    import json
    header = json.loads(members["header"].tobytes())
    header["key"] = "0" * 64                      # another list's (as after a key collision)
    members["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(index_file, **members)
    assert not IX.open_listed(paths, tmp_path / "idx").from_index


# ------------------------------------------------------------------------------------ formats

def ijb_tree(root: Path, n: int) -> list[str]:
    (root / "meta").mkdir(parents=True)
    names = [f"{i}.png" for i in range(n)]
    for k, name in enumerate(names):
        png(root / "loose_crop" / name, k % 250)
    pts = " ".join(["50.0"] * 10)
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text(
        "".join(f"{nm} {k % 3} {k}\n" for k, nm in enumerate(names)))
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("".join(f"{nm} {pts} 0.9\n" for nm in names))
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("0 1 1\n0 2 0\n")
    return names


def lfw_tree(root: Path, per_person: int) -> int:
    people = ["Ann_A", "Bob_B", "Cid_C"]
    for k, name in enumerate(people):
        for n in range(1, per_person + 1):
            png(root / "lfw" / name / f"{name}_{n:04d}.jpg", 10 * k + n)
    lines = []
    for n in range(1, per_person):
        lines += [f"{people[n % 3]}\t{n}\t{n + 1}", f"{people[n % 3]}\t{n}\t{people[(n + 1) % 3]}\t{n}"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return 2 * len(lines)


def list_tree(root: Path, n: int) -> None:
    rows = ["path,label,attack_type"]
    for i in range(n):
        png(root / "live" / f"{i}.png", i % 250)
        png(root / "print" / f"{i}.png", i % 250)
        rows += [f"live/{i}.png,bonafide,", f"print/{i}.png,attack,print"]
    (root / "test.csv").write_text("\n".join(rows) + "\n")


def dtd_tree(root: Path, n: int) -> None:
    base = root / "dtd" / "dtd"
    classes = ["banded", "blotchy"]
    for s in ("train", "val", "test"):
        lines = []
        for i in range(n):
            c = classes[i % 2]
            png(base / "images" / c / f"{c}_{s}_{i}.jpg", 40 * (i % 2))
            lines.append(f"{c}/{c}_{s}_{i}.jpg")
        (base / "labels" / f"{s}1.txt").parent.mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{s}1.txt").write_text("\n".join(lines) + "\n")


def mad_tree(root: Path, n: int) -> None:
    for i in range(n):
        png(root / "bonafide" / f"{i}.png", i % 250)
        png(root / "M1" / f"{i}.png", (i + 7) % 250)


def sun_tree(root: Path, n: int) -> None:
    base = root / "SUN397"
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("/a/abbey\n/b/bakery/shop\n")
    for c in ("a/abbey", "b/bakery/shop"):
        for i in range(n):
            png(base / c / f"sun_{i}.jpg", i % 250)


FORMATS = {
    # format: (type, builder, root below tmp, options, split)
    "ijb": ("ijb", ijb_tree, "IJBC", {}, "test"),
    "lfw-pairs": ("verification", lfw_tree, "lfw", {}, "test"),
    "list": ("pad", list_tree, "pad", {}, "test"),
    "dtd": ("classification", dtd_tree, "dtd", {}, "test"),
    "mad-folders": ("mad", mad_tree, "mad", {}, "test"),
    "sun397": ("classification", sun_tree, "sun", {"sun397_split": "all"}, "test"),
}


def fspec(fmt: str, root: Path, **options) -> DatasetSpec:
    dtype = FORMATS[fmt][0]
    return DatasetSpec(id="d", type=dtype, format=fmt, root=str(root), source="suite.toml",
                       protocols=(dtype,), options={**FORMATS[fmt][3], **options})


def image_of(split) -> Path:
    return Path(split.items[len(split) // 2])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_warm_open_of_a_format_does_not_stat_its_images(fmt, tmp_path, monkeypatch):
    _type, build, sub, _opts, split_name = FORMATS[fmt]
    counts, sizes = [], []
    for n in (4, 30):
        root = tmp_path / f"n{n}" / sub
        build(root, n)
        age(tmp_path / f"n{n}")
        cold = open_dataset(fspec(fmt, root), index_dir=tmp_path / "idx").split(split_name)
        with monkeypatch.context() as m:
            counter = StatCounter(m)
            warm = open_dataset(fspec(fmt, root), index_dir=tmp_path / "idx").split(split_name)
            fp = warm.fingerprint()
        assert warm.items == cold.items and fp == cold.fingerprint()
        images = {os.fspath(p) for p in warm.items}
        assert not images & set(counter.paths), sorted(images & set(counter.paths))[:3]
        counts.append(counter.total)
        sizes.append(len(warm))
    assert sizes[1] > sizes[0] and counts[0] == counts[1], (sizes, counts)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_replacing_a_listed_image_changes_the_split_fingerprint(fmt, tmp_path):
    _type, build, sub, _opts, split_name = FORMATS[fmt]
    root = tmp_path / sub
    build(root, 6)
    age(tmp_path)
    before = open_dataset(fspec(fmt, root), index_dir=tmp_path / "idx").split(split_name)
    again = open_dataset(fspec(fmt, root), index_dir=tmp_path / "idx").split(split_name)
    assert again.fingerprint() == before.fingerprint()
    replace_file(image_of(before), 201, size=(9, 3))
    after = open_dataset(fspec(fmt, root), index_dir=tmp_path / "idx").split(split_name)
    assert after.items == before.items and after.fingerprint() != before.fingerprint()


def test_ijb_missing_or_fifo_crop_keeps_the_message(tmp_path):
    root = tmp_path / "IJBC"
    ijb_tree(root, 6)
    age(tmp_path)
    open_dataset(fspec("ijb", root), index_dir=tmp_path / "idx")
    gone = root / "loose_crop" / "4.png"
    gone.unlink()
    tid = root / "meta" / "ijbc_face_tid_mid.txt"
    with pytest.raises(DataError) as e:
        open_dataset(fspec("ijb", root), index_dir=tmp_path / "idx")
    assert str(e.value) == (f"{tid}: lists 4.png, but {gone} does not exist; expected "
                            f"{__import__('harness.data.ijb', fromlist=['LAYOUT']).LAYOUT}")
    os.mkfifo(gone)
    with pytest.raises(DataError, match=r"lists 4.png, but .*4.png not a regular file \(a FIFO\)"):
        open_dataset(fspec("ijb", root), index_dir=tmp_path / "idx")


def test_lfw_missing_image_keeps_the_message_after_a_warm_open(tmp_path):
    root = tmp_path / "lfw"
    n = lfw_tree(root, 4)
    age(tmp_path)
    open_dataset(fspec("lfw-pairs", root), index_dir=tmp_path / "idx")
    gone = root / "lfw" / "Bob_B" / "Bob_B_0002.jpg"
    gone.unlink()
    with pytest.raises(DataError) as e:
        open_dataset(fspec("lfw-pairs", root), index_dir=tmp_path / "idx")
    assert str(e.value).startswith(
        f"{root / 'pairs.txt'}: pair 1 of {n // 2} lists {gone}, which does not exist; every listed "
        f"image is needed (a skipped pair would shift the folds)")


def test_list_errors_keep_row_order_and_messages(tmp_path):
    list_tree(tmp_path, 3)
    age(tmp_path)
    csv = tmp_path / "test.csv"
    assert len(open_dataset(fspec("list", tmp_path), index_dir=tmp_path / "idx").split("test")) == 6
    (tmp_path / "print" / "1.png").unlink()       # row 5 (line 5)
    with pytest.raises(DataError) as e:
        open_dataset(fspec("list", tmp_path), index_dir=tmp_path / "idx")
    assert str(e.value) == f"{csv}: line 5: image {str(tmp_path / 'print' / '1.png')!r} does not exist"
    # a malformed row after it: the missing image, earlier in the file, is still reported
    csv.write_text(csv.read_text() + "live/0.png,oops,\n")
    with pytest.raises(DataError, match=r"line 5: image .*1.png' does not exist"):
        open_dataset(fspec("list", tmp_path), index_dir=tmp_path / "idx")
    # a malformed row before it is reported first
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:2] + ["live/0.png,real,"] + lines[2:]) + "\n")
    with pytest.raises(DataError, match=r"line 3: unknown label 'real'"):
        open_dataset(fspec("list", tmp_path), index_dir=tmp_path / "idx")


def test_list_link_outside_the_folder_is_refused_from_the_index_too(tmp_path):
    ds = tmp_path / "ds"
    list_tree(ds, 2)
    png(tmp_path / "outside.png", 5)
    (ds / "print" / "1.png").unlink()
    (ds / "print" / "1.png").symlink_to(tmp_path / "outside.png")
    age(tmp_path)
    for _ in range(2):                            # cold, then with the list served from the index
        with pytest.raises(DataError, match=r"line 5: path 'print/1.png' resolves outside"):
            open_dataset(fspec("list", ds), index_dir=tmp_path / "idx")
    assert list((tmp_path / "idx" / IX.SUBDIR).glob("list-*.npz"))  # the files were fine
    sp = open_dataset(fspec("list", ds, allow_outside_root=True), index_dir=tmp_path / "idx").split("test")
    assert os.path.realpath(sp.items[3]) == str((tmp_path / "outside.png").resolve())


def test_classification_list_messages(tmp_path):
    dtd_tree(tmp_path, 4)
    age(tmp_path)
    open_dataset(fspec("dtd", tmp_path), index_dir=tmp_path / "idx")
    images = tmp_path / "dtd" / "dtd" / "images"
    (images / "blotchy" / "blotchy_test_1.jpg").unlink()
    (images / "banded" / "banded_test_2.jpg").unlink()
    with pytest.raises(DataError, match=r"2 of the 4 images listed for split 'test' are missing, "
                                        r"e\.g\. .*blotchy_test_1\.jpg"):
        open_dataset(fspec("dtd", tmp_path), index_dir=tmp_path / "idx")
    png(images / "blotchy" / "blotchy_test_1.jpg")
    os.mkfifo(images / "banded" / "banded_test_2.jpg")
    with pytest.raises(DataError, match=r"1 of the 4 images listed for split 'test' cannot be used, "
                                        r"e\.g\. .*banded_test_2\.jpg: not a regular file \(a FIFO\)"):
        open_dataset(fspec("dtd", tmp_path), index_dir=tmp_path / "idx")


def test_open_dataset_threads_index_dir_to_the_list_formats(tmp_path):
    for fmt in ("ijb", "lfw-pairs", "list", "dtd"):
        _type, build, sub, _opts, _split = FORMATS[fmt]
        build(tmp_path / fmt / sub, 3)
    age(tmp_path)
    for fmt in ("ijb", "lfw-pairs", "list", "dtd"):
        idx = tmp_path / f"idx-{fmt}"
        open_dataset(fspec(fmt, tmp_path / fmt / FORMATS[fmt][2]), index_dir=idx)
        assert list((idx / IX.SUBDIR).glob("list-*.npz")), fmt


def test_index_files_get_the_umasks_permissions(tmp_path):
    root = tmp_path / "d"
    paths = files_in(root)
    age(root)
    old = os.umask(0o002)
    try:
        IX.open_listed(paths, tmp_path / "idx")
        IX.open_tree(root, index_dir=tmp_path / "idx")
    finally:
        os.umask(old)
    written = sorted((tmp_path / "idx" / IX.SUBDIR).iterdir())
    assert {p.suffix for p in written} == {".npz", ".json"}
    assert all(p.stat().st_mode & 0o777 == 0o664 for p in written), [oct(p.stat().st_mode) for p in written]
