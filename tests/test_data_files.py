"""The one image lister, the persisted index, file-kind and size limits, and the shared constants."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import files as F
from harness.data import index as IX
from harness.data import open_dataset
from harness.data import prompts as P
from harness.errors import DataError, UnsafePickleError
from harness.suite import DatasetSpec

HERE = Path(__file__).resolve().parent
HARNESS = HERE.parent / "harness"


def spec(fmt, root, prompts=None, **options):
    return DatasetSpec(id="ds", type="classification", format=fmt, root=str(root),
                       source="suite.toml", protocols=("zeroshot",), prompts=prompts,
                       options=options)


def png(path: Path, value: int = 0, size=(4, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def tree(root: Path, classes=("1", "2", "3"), per_class=3) -> None:
    for k, c in enumerate(classes):
        for i in range(per_class):
            png(root / "test" / c / f"{i}.png", 40 * k)


def age(root: Path, seconds: float = 60.0) -> None:
    """Move every directory's mtime into the past (an index built now is then not 'racy')."""
    t = time.time() - seconds
    for d, _, _ in os.walk(root):
        os.utime(d, (t, t))


def opened(root, index_dir, **kw):
    return open_dataset(spec("imagefolder", root, **kw), index_dir=index_dir)


# -------------------------------------------------------------------------------- the lister

def test_symlink_loop_is_walked_once_and_reported(tmp_path):
    clean, looped = tmp_path / "clean", tmp_path / "looped"
    tree(clean)
    tree(looped)
    (looped / "test" / "3" / "loop").symlink_to("../3")        # the loop
    (looped / "test" / "2" / "up").symlink_to("../..")          # a second one, to the top
    a = opened(clean, tmp_path / "idx").split("test")
    b = opened(looped, tmp_path / "idx")
    sb = b.split("test")
    assert len(sb) == len(a) == 9
    assert [os.path.relpath(p, looped) for p in sb.items] == [os.path.relpath(p, clean) for p in a.items]
    assert sb.labels.tolist() == a.labels.tolist()
    notes = b.meta["notes"]
    assert len(notes) == 2
    assert any(str(looped / "test" / "3" / "loop") in n and "already listed" in n for n in notes)


def test_only_regular_files_are_listed_and_a_fifo_is_never_waited_on(tmp_path):
    tree(tmp_path)
    fifo = tmp_path / "test" / "1" / "x.png"
    os.mkfifo(fifo)
    ds = opened(tmp_path, tmp_path / "idx")
    assert str(fifo) not in ds.split("test").items and len(ds.split("test")) == 9
    assert any(str(fifo) in n and "not a regular file (a FIFO)" in n for n in ds.meta["notes"])
    # decoding it (e.g. from a list file) fails at once instead of blocking a loader worker
    box: dict = {}

    def run():
        try:
            F.decode_image(str(fifo))
        except F.UnreadableImage as e:
            box["error"] = str(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert "error" in box and "not a regular file (a FIFO)" in box["error"]


def test_one_extension_list_serves_every_folder_format():
    from harness.data import attack_list, classification, imagefolder

    assert imagefolder.IMAGE_EXTENSIONS is F.IMAGE_EXTENSIONS
    assert attack_list.IMAGE_EXTENSIONS is F.IMAGE_EXTENSIONS
    # no module under harness/data walks folders on its own any more
    for path in (HARNESS / "data").glob("*.py"):
        src = path.read_text()
        if path.name != "files.py":
            assert "os.walk(" not in src and ".rglob(" not in src, path.name
    assert classification.open_tree is IX.open_tree and IX.scan_tree is F.scan_tree  # sun397 'all'


def test_empty_class_folder_fails_naming_it(tmp_path):
    tree(tmp_path)
    (tmp_path / "test" / "0-empty").mkdir()
    with pytest.raises(DataError, match=r"0-empty: class folder holds no images") as e:
        opened(tmp_path, tmp_path / "idx")
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------- the index

class StatCounter:
    def __init__(self, monkeypatch):
        self.stat = self.scandir = 0
        real_stat, real_scandir = os.stat, os.scandir

        def stat(*a, **k):
            self.stat += 1
            return real_stat(*a, **k)

        def scandir(*a, **k):
            self.scandir += 1
            return real_scandir(*a, **k)

        monkeypatch.setattr(os, "stat", stat)
        monkeypatch.setattr(os, "scandir", scandir)


def test_warm_open_stats_directories_only(tmp_path, monkeypatch):
    counts = []
    for per_class in (5, 60):
        root = tmp_path / f"ds{per_class}"
        tree(root, classes=[f"c{i}" for i in range(4)], per_class=per_class)
        age(root)
        cold = opened(root, tmp_path / "idx").split("test")
        with monkeypatch.context() as m:
            counter = StatCounter(m)
            warm = opened(root, tmp_path / "idx").split("test")
        assert warm.items == cold.items and warm.fingerprint() == cold.fingerprint()
        assert len(warm) == 4 * per_class
        counts.append((counter.stat, counter.scandir))
    # 5 directories (test/ + 4 classes) and a few root checks, whatever the number of files;
    # the only directory reads are of test/ itself (its class folders)
    assert counts[0] == counts[1] and counts[1][0] <= 5 + 8 and counts[1][1] <= 3, counts


@pytest.mark.parametrize("change", ["add", "remove", "rename", "add_class_file_in_subdir"])
def test_index_sees_added_removed_renamed_files(tmp_path, change):
    root = tmp_path / "ds"
    tree(root)
    (root / "test" / "1" / "sub").mkdir()
    png(root / "test" / "1" / "sub" / "s.png")
    age(root)
    before = opened(root, tmp_path / "idx").split("test")
    target = root / "test" / "2"
    if change == "add":
        png(target / "new.png")
    elif change == "remove":
        (target / "0.png").unlink()
    elif change == "rename":
        (target / "0.png").rename(target / "9.png")
    else:
        png(root / "test" / "1" / "sub" / "t.png")
    after = opened(root, tmp_path / "idx").split("test")
    expected = sorted(str(p) for p in (root / "test").rglob("*.png"))
    assert sorted(after.items) == expected and after.fingerprint() != before.fingerprint()


def test_in_place_edit_is_seen_with_check_sizes_only(tmp_path):
    root = tmp_path / "ds"
    tree(root)
    age(root)
    f = root / "test" / "1" / "0.png"
    t0 = IX.open_tree(root / "test", index_dir=tmp_path / "idx")
    d = os.stat(f.parent)
    png(f, 255, size=(5, 5))                       # rewritten in place: new size
    os.utime(f.parent, ns=(d.st_atime_ns, d.st_mtime_ns))  # as if the folder had not changed
    t1 = IX.open_tree(root / "test", index_dir=tmp_path / "idx")
    assert t1.from_index and t1.fingerprint == t0.fingerprint   # documented blind spot
    t2 = IX.open_tree(root / "test", index_dir=tmp_path / "idx", check_sizes=True)
    assert not t2.from_index and t2.fingerprint != t0.fingerprint


def test_fingerprint_is_independent_of_the_mount_point_but_not_of_the_files(tmp_path):
    a = tmp_path / "mnt1" / "ds"
    tree(a)
    b = tmp_path / "mnt2" / "elsewhere" / "ds"
    shutil.copytree(a, b, copy_function=shutil.copy2)  # same names, sizes and mtimes
    fa = opened(a, tmp_path / "idx").split("test").fingerprint()
    fb = opened(b, tmp_path / "idx").split("test").fingerprint()
    assert fa == fb
    f = b / "test" / "3" / "1.png"
    tmp = b / "test" / "3" / "new.tmp.png"
    png(tmp, 99)
    os.replace(tmp, f)                             # a file replaced (same name)
    assert opened(b, tmp_path / "idx").split("test").fingerprint() != fa


def test_racy_index_is_not_trusted(tmp_path):
    root = tmp_path / "ds"
    tree(root)                                     # just written: mtimes are 'now'
    t0 = IX.open_tree(root / "test", index_dir=tmp_path / "idx")
    t1 = IX.open_tree(root / "test", index_dir=tmp_path / "idx")
    assert not t0.from_index and not t1.from_index
    age(root)
    IX.open_tree(root / "test", index_dir=tmp_path / "idx")
    assert IX.open_tree(root / "test", index_dir=tmp_path / "idx").from_index


def test_unwritable_or_corrupt_index_still_lists(tmp_path):
    root = tmp_path / "ds"
    tree(root)
    age(root)
    blocker = tmp_path / "file"
    blocker.write_text("x")                        # index_dir is a file: cannot be written
    assert len(IX.open_tree(root / "test", index_dir=blocker).files) == 9
    IX.open_tree(root / "test", index_dir=tmp_path / "idx")
    for p in (tmp_path / "idx" / IX.SUBDIR).glob("*.json"):
        p.write_text("{not json")
    t = IX.open_tree(root / "test", index_dir=tmp_path / "idx")
    assert not t.from_index and len(t.files) == 9


# ------------------------------------------------------------------------- option files, limits

def test_option_file_must_be_regular_and_small(tmp_path):
    fifo = tmp_path / "names.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.txt"
    big.write_text("x\n" * 600_000)
    cases = [(str(fifo), "not a regular file (a FIFO)"), ("/dev/zero", "not a regular file"),
             (str(big), "1,200,000 bytes, above the limit of 1,000,000 bytes")]
    for path, msg in cases:
        for key in ("classnames", "templates"):
            s = spec("cifar10", "/r", **{key: path})
            box: dict = {}

            def run(s=s, key=key, box=box):
                try:
                    (P.classnames_for(s, ["a", "b"]) if key == "classnames" else P.templates_for(s))
                except DataError as e:
                    box["error"] = str(e)

            t = threading.Thread(target=run, daemon=True)
            t.start()
            t.join(10)
            assert msg in box.get("error", ""), (path, key, box)
            assert path in box["error"]


def test_images_above_the_pixel_limit_are_unreadable_with_the_reason(tmp_path, monkeypatch):
    assert Image.MAX_IMAGE_PIXELS == F.MAX_IMAGE_PIXELS == 89_478_485
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for size in ((11, 10), (30, 30)):              # PIL's warning band (1-2x) and its error (>2x)
        p = tmp_path / f"{size[0]}.png"
        png(p, size=size)
        with pytest.raises(F.UnreadableImage, match=r"refused, more pixels than the limit "
                                                     r"Image.MAX_IMAGE_PIXELS = 100"):
            F.decode_image(str(p))
        with pytest.raises(F.UnreadableImage, match="MAX_IMAGE_PIXELS"):
            F.decode_image(p.read_bytes())
    png(tmp_path / "ok.png", size=(10, 10))
    assert F.decode_image(str(tmp_path / "ok.png")).size == (10, 10)


# ------------------------------------------------------------------------- class names vs folders

def test_word_folders_that_disagree_with_the_prompt_names_fail(tmp_path):
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    with pytest.raises(DataError) as e:
        P.classnames_for(spec("imagefolder", "/r", prompts="mnist"), sorted(words))
    msg = str(e.value)
    assert "\n" not in msg and "[eight, five, four" in msg and "[0, 1, 2" in msg
    assert "classnames = FILE" in msg
    # digits agree with mnist's names; an explicit classnames file is trusted
    assert P.classnames_for(spec("imagefolder", "/r", prompts="mnist"),
                            [str(i) for i in range(10)])[9] == "9"
    names = tmp_path / "n.txt"
    names.write_text("\n".join(str(words.index(w)) for w in sorted(words)))
    s = spec("imagefolder", "/r", prompts="mnist", classnames=str(names))
    assert P.classnames_for(s, sorted(words))[0] == "8"
    # same words in another case / separator agree
    assert P.classnames_for(spec("imagefolder", "/r", prompts="flowers"),
                            [n.replace(" ", "_").title() for n in P.vendored_classnames("flowers")])[0] \
        == "pink primrose"


def test_prompts_for_records_names_templates_and_sources(tmp_path):
    pr = P.prompts_for(spec("imagefolder", "/r", prompts="mnist"), [str(i) for i in range(10)])
    d = pr.details()
    assert d["classnames"] == [str(i) for i in range(10)]
    assert d["templates"] == ['a photo of the number: "{c}".']
    assert "'mnist'" in d["classnames_source"] and "'mnist'" in d["templates_source"]
    pr = P.prompts_for(spec("imagefolder", "/r"), ["cat", "dog"])
    assert pr.classnames == ["cat", "dog"] and "dataset's classes" in pr.classnames_source
    assert len(pr.templates) == 80


# ------------------------------------------------------------------ layouts: SUN397, ImageNetV2

def _sun(root: Path) -> None:
    base = root / "SUN397"
    (base).mkdir(parents=True)
    (base / "ClassName.txt").write_text("/a/abbey\n/b/bakery/shop\n")
    for cls, n in (("a/abbey", 3), ("b/bakery/shop", 2)):
        for i in range(n):
            png(base / cls / f"sun_{i}.jpg".replace(".jpg", ".jpg"))
    (base / "Training_01.txt").write_text("/a/abbey/sun_0.jpg\n/b/bakery/shop/sun_0.jpg\n")
    (base / "Testing_01.txt").write_text("/a/abbey/sun_1.jpg\n/b/bakery/shop/sun_1.jpg\n")


def test_sun397_all_images_opt_in(tmp_path):
    _sun(tmp_path)
    default = open_dataset(spec("sun397", tmp_path), index_dir=tmp_path / "idx")
    assert len(default.split("test")) == 2 and "partition 01" in default.meta["split_rule"]
    allimg = open_dataset(spec("sun397", tmp_path, sun397_split="all"), index_dir=tmp_path / "idx")
    test, train = allimg.split("test"), allimg.split("train")
    assert len(test) == 5 and test.items == train.items
    assert test.labels.tolist() == [0, 0, 0, 1, 1]
    assert "all images" in allimg.meta["split_rule"]


def test_imagenetv2_clip_benchmark_folder_name(tmp_path):
    for c in ("0", "1", "10"):
        png(tmp_path / "ImageNetV2-matched-frequency" / c / "x.jpeg")
    ds = open_dataset(spec("imagenetv2", tmp_path), index_dir=tmp_path / "idx")
    assert sorted(ds.split("test").labels.tolist()) == [0, 1, 10]


# ---------------------------------------------------------------------- one home per concern

def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    return mods


def test_data_package_and_base_do_not_import_each_other():
    assert "harness.data" not in _imports(HARNESS / "data" / "base.py")
    assert "harness.data.registry" in _imports(HARNESS / "data" / "__init__.py")


def test_one_restricted_unpickler():
    subclasses = [p for p in HARNESS.rglob("*.py") if "(pickle.Unpickler)" in p.read_text()]
    assert [p.name for p in subclasses] == ["safe_pickle.py"]


def test_cifar_pickles_use_the_one_policy(tmp_path):
    from harness.data.classification import load_plain_pickle

    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps({"x": np.arange(3, dtype=">i2"), "y": np.ones(2, "<f4")}, protocol=2))
    obj = load_plain_pickle(p)
    assert obj["x"].tolist() == [0, 1, 2] and obj["y"].tolist() == [1.0, 1.0]
    p.write_bytes(pickle.dumps({"data": np.array([1, 2], dtype=object)}, protocol=2))
    with pytest.raises(UnsafePickleError, match="'O"):
        load_plain_pickle(p)


def test_one_arcface_template_and_one_clip_mean():
    from fixtures.demo import faces
    from harness.data import align, constants
    from harness.models import preprocess

    assert faces.ARCFACE_TEMPLATE is constants.ARCFACE_TEMPLATE_112
    assert align.ARCFACE_TEMPLATE_112 is constants.ARCFACE_TEMPLATE_112
    assert preprocess.CLIP_MEAN is constants.CLIP_MEAN and preprocess.IMAGENET_STD is constants.IMAGENET_STD
    np.testing.assert_array_equal(constants.ARCFACE_TEMPLATE_112[0], [38.2946, 51.6963])


# ------------------------------------------------------------------ the suite keys of these items

SUITE = """
[models.m]
arch = "RN50"

[datasets.pad]
type = "pad"
format = "list"
root = "/d/pad"
protocols = ["pad"]
video_id_pattern = "^[a-z]+/(v\\\\d+)/"
allow_outside_root = true

[datasets.sun]
type = "classification"
format = "sun397"
root = "/d/sun"
protocols = ["zeroshot", "linear_probe"]
sun397_split = "all"
"""


def test_suite_accepts_the_dataset_options():
    from harness.errors import SuiteError
    from harness.suite import parse_suite

    s = parse_suite(SUITE, "/suites/s.toml", Path("/suites"))
    assert s.datasets["pad"].options == {"video_id_pattern": r"^[a-z]+/(v\d+)/",
                                         "allow_outside_root": True}
    assert s.datasets["sun"].option("sun397_split") == "all"
    with pytest.raises(SuiteError, match=r"sun397_split.*'partition01', 'all'"):
        parse_suite(SUITE.replace('"all"', '"every"'), "/suites/s.toml", Path("/suites"))
