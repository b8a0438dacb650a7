"""Format ``wds`` (CLIP_benchmark's WebDataset shards) and the ``[suite] include`` mechanism.

Shards are written from the same generated image trees the other tests use, with webdataset's
own ``ShardWriter`` (and with ``tarfile`` in other tar dialects); features and metrics on the
shards must equal those on the folder layout exactly.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny_clip import make_digits_imagefolder, make_tiny_clip

from harness.data import open_dataset
from harness.data.prompts import classnames_for, templates_for, vendored_classnames, vendored_templates
from harness.data.wds import scan_shard
from harness.errors import DataError, DataMissing, SuiteError
from harness.features import check_unreadable, extract
from harness.suite import DatasetSpec, load_suite, parse_suite

REPO = Path(__file__).resolve().parents[1]
MNIST_NAMES = vendored_classnames("mnist")
MNIST_TEMPLATES = vendored_templates("mnist")


def spec(root, **kw) -> DatasetSpec:
    options = {k: kw.pop(k) for k in ("classnames", "templates") if k in kw}
    return DatasetSpec(id="w", type="classification", format="wds", root=str(root), source="suite.toml",
                       protocols=("zeroshot", "linear_probe"), options=options, **kw)


def folder_samples(root: Path, split: str) -> list[tuple[Path, int]]:
    """(path, label) in the imagefolder format's order: sorted classes, then sorted paths."""
    classes = sorted(os.listdir(root / "test"))
    return [(root / split / c / f, i) for i, c in enumerate(classes)
            for f in sorted(os.listdir(root / split / c))]


def webp_lossless(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def write_wds(folder: Path, out: Path, maxcount: int = 7, webp: tuple[int, ...] = (),
              classnames=MNIST_NAMES, templates=MNIST_TEMPLATES, splits=("train", "test")) -> Path:
    """Shards of an imagefolder tree, as clip_benchmark_export_wds writes them."""
    import webdataset as wds

    for split in splits:
        (out / split).mkdir(parents=True, exist_ok=True)
        with wds.ShardWriter(str(out / split / "%d.tar"), maxcount=maxcount, verbose=0) as w:
            for i, (p, y) in enumerate(folder_samples(folder, split)):
                if i in webp:
                    w.write({"__key__": f"s{i:07d}", "webp": webp_lossless(p), "cls": y})
                else:
                    w.write({"__key__": f"s{i:07d}", "png": p.read_bytes(), "cls": y})
            n = w.shard
        (out / split / "nshards.txt").write_text(f"{n}\n")
    if classnames is not None:
        (out / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if templates is not None:
        (out / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return out


def write_tar(path: Path, members: list[tuple[str, bytes]], fmt=tarfile.PAX_FORMAT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def png(value: int, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(buf, format="PNG")
    return buf.getvalue()


def tiny_wds(root: Path, samples: list[list[tuple[str, bytes]]], classnames=("a", "b"),
             split="test") -> Path:
    """One shard per entry of ``samples`` (each a list of tar members)."""
    for i, members in enumerate(samples):
        write_tar(root / split / f"{i}.tar", members)
    (root / split / "nshards.txt").write_text(str(len(samples)))
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    return root


@pytest.fixture(autouse=True)
def index_cache(tmp_path_factory, monkeypatch):
    """Shard indexes persist under $HARNESS_CACHE: keep them out of the home folder."""
    d = tmp_path_factory.getbasetemp() / "harness-cache"
    monkeypatch.setenv("HARNESS_CACHE", str(d))
    return d


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("wds")
    folder = make_digits_imagefolder(base / "digits", n_train=6, n_test=4)
    shards = write_wds(folder, base / "digits_wds", maxcount=7, webp=(3, 41))
    model_dir = make_tiny_clip(base / "tiny")
    return folder, shards, model_dir


@pytest.fixture(scope="module")
def tiny_model(trees):
    from harness.models import load_model
    from harness.suite import ModelSpec

    return load_model(ModelSpec(id="tiny", arch=f"local-dir:{trees[2]}", source="t"), "cpu")


# ------------------------------------------------------------------------------ layout

def test_shards_load_like_the_folder(trees):
    folder, shards, _ = trees
    ds = open_dataset(spec(shards))
    assert ds.classnames == MNIST_NAMES
    assert sorted(ds.splits) == ["test", "train"]
    assert ds.meta["shards"] == {"train": 9, "test": 6}  # 60 / 7 and 40 / 7 rounded up
    for split in ("train", "test"):
        want = folder_samples(folder, split)
        sp = ds.splits[split]
        assert len(sp) == len(want)
        assert sp.labels.tolist() == [y for _, y in want]
        for i in (0, 3, 7, len(sp) - 1):  # across shard boundaries, 3 stored as WebP (train)
            a = np.asarray(sp.load(i))
            b = np.asarray(Image.open(want[i][0]).convert("RGB"))
            assert a.shape == b.shape and np.array_equal(a, b)
        assert str(sp.items[8]) == f"{shards / split / '1.tar'}:s{8:07d}"
    assert templates_for(spec(shards)) == MNIST_TEMPLATES


def test_features_equal_to_the_bit_and_in_worker_processes(trees, tiny_model):
    folder, shards, _ = trees
    ref = open_dataset(DatasetSpec(id="f", type="classification", format="imagefolder",
                                   root=str(folder), source="s", protocols=("zeroshot",)))
    ds = open_dataset(spec(shards))
    for split in ("train", "test"):
        a = extract(tiny_model, ref.splits[split], num_workers=0)
        b = extract(tiny_model, ds.splits[split], num_workers=0)
        c = extract(tiny_model, ds.splits[split], num_workers=2, batch_size=8)
        assert a.x.shape == (len(ref.splits[split]), 16)
        assert np.array_equal(a.x, b.x) and np.array_equal(a.x, c.x)
        assert b.valid.all() and c.loader["workers"] == 2
        assert np.array_equal(a.labels, b.labels)


def test_reader_pickles_small_without_descriptors(trees):
    ds = open_dataset(spec(trees[1]))
    sp = ds.splits["test"]
    sp.load(0)  # opens a descriptor in this process
    blob = pickle.dumps(sp.reader)
    assert len(blob) < 2000
    again = pickle.loads(blob)
    assert again._fds == {} and np.array_equal(np.asarray(again(sp.items[5])), np.asarray(sp.load(5)))


def test_fingerprint_is_cheap_and_follows_the_files(trees, tmp_path):
    shards = shutil.copytree(trees[1], tmp_path / "copy")
    sp = open_dataset(spec(shards)).splits["test"]
    fp = sp.fingerprint()
    # cheap: stat lines only (path|size|mtime) for 6 shards + 2 text files
    assert len(sp.fingerprint_parts) == 8
    assert all(str(p).count("|") == 2 for p in sp.fingerprint_parts)
    assert open_dataset(spec(shards)).splits["test"].fingerprint() == fp
    os.utime(shards / "test" / "2.tar", ns=(1, 1))
    assert open_dataset(spec(shards)).splits["test"].fingerprint() != fp
    fp2 = open_dataset(spec(shards)).splits["test"].fingerprint()
    (shards / "classnames.txt").write_text("\n".join(n + " " for n in MNIST_NAMES) + "x\n")
    assert open_dataset(spec(shards)).splits["test"].fingerprint() != fp2


def test_index_persists_and_a_damaged_one_is_rebuilt(trees, tmp_path, monkeypatch, index_cache):
    from harness.data import wds

    root = shutil.copytree(trees[1], tmp_path / "w")
    wds._memo.clear()
    first = open_dataset(spec(root)).splits["test"]
    files = sorted(wds.index_dir().rglob("*.npz"))
    assert wds.index_dir() == index_cache / "wds-index" and len(files) >= 6

    def no_scan(path):
        raise AssertionError(f"scanned {path}")

    wds._memo.clear()
    monkeypatch.setattr(wds, "scan_shard", no_scan)
    again = open_dataset(spec(root)).splits["test"]  # from the persisted index, no scan
    assert list(map(str, again.items)) == list(map(str, first.items))
    assert again.labels.tolist() == first.labels.tolist()
    assert np.array_equal(np.asarray(again.load(9)), np.asarray(first.load(9)))
    # a touched shard has a new key: scanned again
    os.utime(root / "test" / "0.tar", ns=(5, 5))
    wds._memo.clear()
    with pytest.raises(AssertionError, match=r"scanned .*0.tar"):
        open_dataset(spec(root))
    monkeypatch.undo()
    monkeypatch.setenv("HARNESS_CACHE", str(index_cache))
    # a damaged index file is ignored and rewritten
    k = (str(root / "test" / "1.tar"), (root / "test" / "1.tar").stat().st_size,
         (root / "test" / "1.tar").stat().st_mtime_ns)
    wds._index_file(k).write_bytes(b"garbage")
    wds._memo.clear()
    assert open_dataset(spec(root)).splits["test"].labels.tolist() == first.labels.tolist()
    assert wds._load_index(wds._index_file(k)) is not None


def test_suite_options_and_prompts_override_the_text_files(trees, tmp_path):
    shards = trees[1]
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"digit {i}" for i in range(10)))
    tmpl = tmp_path / "t.json"
    tmpl.write_text(json.dumps(["{c}!", "a {c}"]))
    s = spec(shards, classnames=str(names), templates=str(tmpl))
    ds = open_dataset(s)
    assert classnames_for(s, ds.classnames) == [f"digit {i}" for i in range(10)]
    assert templates_for(s) == ["{c}!", "a {c}"]
    p = spec(shards, prompts="cifar10")  # a vendored key replaces the shards' templates
    assert templates_for(p) == vendored_templates("cifar10")
    # without a templates file: the usual default (CLIP's 80 imagenet1k templates)
    bare = shutil.copytree(shards, tmp_path / "bare")
    (bare / "zeroshot_classification_templates.txt").unlink()
    assert templates_for(spec(bare)) == vendored_templates("imagenet1k")


def test_classnames_keep_blank_lines_in_place(tmp_path):
    # CLIP_benchmark keeps an empty line as a class name (e.g. clevr_closest_object_distance)
    root = tiny_wds(tmp_path / "w", [[("s0.png", png(1)), ("s0.cls", b"2")]], classnames=("a", "", "c"))
    assert open_dataset(spec(root)).classnames == ["a", "", "c"]


# ---------------------------------------------------------------------- tar dialects

@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_dialects_long_names_and_folders(tmp_path, fmt):
    deep = "d" * 60 + "/" + "e" * 70  # > 100 characters: prefix field / long name / pax path
    members = [(f"{deep}/k1.PNG", png(10)), (f"{deep}/k1.cls", b"1"), ("sub/k2.jpg", png(20)),
               ("sub/k2.cls", b" 0\n"), ("k3.txt", b"caption"), ("k3.cls", b"1")]
    root = tiny_wds(tmp_path / "w", [members])
    ds = open_dataset(spec(root))
    sp = ds.splits["test"]
    assert len(sp) == 3 and sp.labels.tolist() == [1, 0, 1]
    assert str(sp.items[0]).endswith(members[0][0][:-4])
    assert np.asarray(sp.load(1))[0, 0].tolist() == [20, 235, 10]
    with tarfile.open(root / "test" / "0.tar") as tf:
        first = tf.getmembers()[0]
    assert sp.items[0].offset == first.offset_data and sp.items[0].size == first.size
    f = extract_pixels(sp)
    assert f.bad_items == [f"{root / 'test' / '0.tar'}:k3"]  # no image: unreadable, by key


names = st.text(alphabet="abcdefghij_-0123456789", min_size=1, max_size=40)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(names, st.binary(max_size=1500)), min_size=0, max_size=12),
       st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
       st.integers(0, 3))
def test_scanner_finds_what_tarfile_finds(tmp_path_factory, files, fmt, depth):
    """Property: every member's data offset and size equal tarfile's, grouped as webdataset
    groups them (consecutive members with the same key)."""
    path = tmp_path_factory.mktemp("h") / "0.tar"
    prefix = "/".join(["x" * 30] * depth)
    members = [((f"{prefix}/" if prefix else "") + f"{n}.{'png' if i % 2 else 'cls'}", d)
               for i, (n, d) in enumerate(files)]
    write_tar(path, members, fmt)
    with tarfile.open(path) as tf:
        infos = [m for m in tf.getmembers() if m.isfile()]
    ix = scan_shard(str(path))
    keys, expect_off = [], []
    for m in infos:
        key = os.path.dirname(m.name) + "/" if os.path.dirname(m.name) else ""
        key += os.path.basename(m.name).split(".", 1)[0]
        if not keys or keys[-1] != key:
            keys.append(key)
            expect_off.append(-1)
        if m.name.endswith(".png") and expect_off[-1] == -1:
            expect_off[-1] = m.offset_data
    assert ix.keys == keys
    assert ix.offset.tolist() == expect_off


# ----------------------------------------------------------------------------- bad input

def test_missing_shard_is_one_line_naming_it(trees, tmp_path):
    root = shutil.copytree(trees[1], tmp_path / "w")
    (root / "test" / "4.tar").unlink()
    with pytest.raises(DataError) as e:
        open_dataset(spec(root))
    msg = str(e.value)
    assert "\n" not in msg and str(root / "test" / "4.tar") in msg and "6 shards" in msg


@pytest.mark.parametrize("cut", ["mid-member", "mid-header", "no-end-blocks", "garbage", "lfs"])
def test_truncated_or_damaged_tar_is_one_line_naming_the_shard(trees, tmp_path, cut):
    root = shutil.copytree(trees[1], tmp_path / "w")
    shard = root / "test" / "1.tar"
    data = shard.read_bytes()
    with tarfile.open(shard) as tf:
        last = tf.getmembers()[-1]
    if cut == "mid-member":
        data = data[:last.offset_data + last.size // 2]
    elif cut == "mid-header":
        data = data[:last.offset_data - 200]
    elif cut == "no-end-blocks":
        data = data[:last.offset_data + (last.size + 511) // 512 * 512]
    elif cut == "garbage":
        data = b"<html>not found</html>" + bytes(600)
    else:
        data = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 123\n"
    shard.write_bytes(data)
    with pytest.raises(DataError) as e:
        open_dataset(spec(root))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(shard))
    assert {"garbage": "not a tar archive", "lfs": "Git LFS pointer"}.get(cut, "truncated") in msg


def test_bad_nshards_and_missing_test_and_retrieval_type(tmp_path):
    root = tiny_wds(tmp_path / "w", [[("s0.png", png(1)), ("s0.cls", b"0")]], classnames=("a",))
    (root / "test" / "nshards.txt").write_text("two\n")
    with pytest.raises(DataError, match=r"nshards.txt: expected one integer"):
        open_dataset(spec(root))
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "dataset_type.txt").write_text("retrieval\n")
    with pytest.raises(DataError, match=r"dataset_type.txt: says 'retrieval'"):
        open_dataset(spec(root))
    (root / "dataset_type.txt").write_text("classification\n")
    assert len(open_dataset(spec(root)).splits["test"]) == 1
    shutil.rmtree(root / "test")
    with pytest.raises(DataMissing, match=r"no test/nshards.txt"):
        open_dataset(spec(root))


@pytest.mark.parametrize("n_names", [2, 4])
def test_classnames_length_must_be_largest_label_plus_one(tmp_path, n_names):
    root = tiny_wds(tmp_path / "w", [[("s0.png", png(1)), ("s0.cls", b"2"), ("s1.png", png(2)),
                                      ("s1.cls", b"0")]], classnames=[f"c{i}" for i in range(n_names)])
    with pytest.raises(DataError) as e:
        open_dataset(spec(root))
    msg = str(e.value)
    assert "\n" not in msg and f"{n_names} class names" in msg and "largest label in the shards is 2" in msg
    assert msg.startswith(str(root / "classnames.txt"))


class Pixel:
    """Features = the mean colour of the image (hand-computable)."""

    id = "pixel"
    device = "cpu"
    fingerprint = "pixel"

    def __init__(self):
        from harness.models.preprocess import Preprocess

        self.preprocess = Preprocess(size=4, interpolation="bilinear", mean=(0.0, 0.0, 0.0),
                                     std=(1.0, 1.0, 1.0), resize="squash")

    def encode_image(self, x):
        return x.mean(dim=(-1, -2))


def extract_pixels(sp):
    return extract(Pixel(), sp, num_workers=0)


def _samples(n: int, broken: dict[int, str]):
    members = []
    for i in range(n):
        kind = broken.get(i)
        if kind != "no-image":
            members.append((f"s{i:04d}.jpg", png(i % 256)))
        if kind != "no-label":
            members.append((f"s{i:04d}.cls", b"x" if kind == "bad-label" else str(i % 2).encode()))
    return members


def test_sample_without_image_or_label_counts_as_unreadable_by_key(tmp_path):
    # 1 broken sample in 150: under the 1 % limit, listed by key, dropped from the metrics
    root = tiny_wds(tmp_path / "ok", [_samples(150, {7: "no-label"})])
    sp = open_dataset(spec(root)).splits["test"]
    f = extract_pixels(sp)
    check_unreadable(f, "w/test")
    assert f.bad_items == [f"{root / 'test' / '0.tar'}:s0007"]
    assert sp.labels[7] == -1 and f.dropping_unreadable().labels.min() == 0
    assert len(f.dropping_unreadable()) == 149
    x0 = f.x[8]  # a good sample's features are its mean colour (value 8)
    assert np.allclose(x0, np.array([8, 247, 4]) / 255.0, atol=1e-6)
    # 3 broken (each kind) in 40: over the limit, a one-line failure naming the first keys
    root = tiny_wds(tmp_path / "bad", [_samples(40, {3: "no-image", 5: "no-label", 9: "bad-label"})])
    f = extract_pixels(open_dataset(spec(root)).splits["test"])
    with pytest.raises(DataError) as e:
        check_unreadable(f, "w/test")
    msg = str(e.value)
    assert "3 of 40 images unreadable" in msg and "\n" not in msg
    for k in ("s0003", "s0005", "s0009"):
        assert f"0.tar:{k}" in msg


# ---------------------------------------------------------------- end to end (plugin)

def test_zeroshot_and_probe_numbers_equal_on_shards_and_folder(trees, pytester):
    folder, shards, model_dir = trees
    shutil.copy(REPO / "benchmarks" / "test_general.py", pytester.path / "test_general.py")
    suite = f"""
[models.tiny]
arch = "local-dir:{model_dir}"

[datasets.digits]
type = "classification"
format = "imagefolder"
root = "{folder}"
prompts = "mnist"
protocols = ["zeroshot", "linear_probe"]

[datasets.digits_wds]
type = "classification"
format = "wds"
root = "{shards}"
protocols = ["zeroshot", "linear_probe"]
"""
    (pytester.path / "suite.toml").write_text(suite)
    res = pytester.runpytest_inprocess(
        "test_general.py", "--suite", str(pytester.path / "suite.toml"), "--results-dir",
        str(pytester.path / "out"), "--feature-cache", str(pytester.path / "cache"),
        "-p", "no:cacheprovider")
    assert res.ret == 0, res.stdout.str()
    cases = json.loads((pytester.path / "out" / "results.json").read_text())["cases"]
    got = {(c["protocol"], c["dataset"]): c for c in cases}
    assert len(got) == 4 and all(c["status"] == "passed" for c in cases)
    for proto in ("zeroshot", "linear_probe"):
        a, b = got[proto, "digits"]["metrics"], got[proto, "digits_wds"]["metrics"]
        assert set(a) >= {"acc1", "acc5", "mean_per_class_recall"}
        assert a == b, proto


# -------------------------------------------------------------------- suite include

def test_paper_wds_suite_differs_from_paper_only_in_the_general_datasets():
    paper = load_suite(REPO / "benchmarks" / "suites" / "paper.toml")
    wds = load_suite(REPO / "benchmarks" / "suites" / "paper-wds.toml")
    assert wds.name == "paper-wds"
    assert list(wds.datasets) == list(paper.datasets) and list(wds.models) == list(paper.models)
    assert all(wds.models[m].arch == paper.models[m].arch and wds.models[m].lora == paper.models[m].lora
               for m in paper.models)
    assert wds.gates == paper.gates
    changed = {d for d in paper.datasets if wds.datasets[d] != paper.datasets[d]}
    general = {d for d, s in paper.datasets.items() if s.type == "classification"}
    assert changed == general and len(general) == 14
    folders = {d: os.path.basename(wds.datasets[d].root) for d in general}
    assert folders["cifar10"] == "wds_vtab-cifar10" and folders["imagenetv2"] == "wds_imagenetv2"
    assert folders["flowers"] == "wds_vtab-flowers" and folders["fgvc_aircraft"] == "wds_fgvc_aircraft"
    assert all(f.startswith("wds_") for f in folders.values())
    for d in general:
        w, p = wds.datasets[d], paper.datasets[d]
        assert (w.format, w.protocols, w.label, w.type) == ("wds", p.protocols, p.label, p.type)


def test_include_replaces_tables_whole_in_place_and_reports_cycles(tmp_path):
    (tmp_path / "base.toml").write_text("""
[models.a]
arch = "RN50"
pretrained = "openai"
[models.b]
arch = "RN50"
pretrained = "openai"
baseline = "a"
[datasets.x]
type = "classification"
format = "cifar10"
root = "data/x"
protocols = ["zeroshot", "linear_probe"]
val_fraction = 0.3
[datasets.y]
type = "classification"
format = "mnist"
root = "data/y"
protocols = ["zeroshot"]
[[gates]]
metric = "acc1"
min = 0.1
""")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "top.toml").write_text("""
[suite]
include = "../base.toml"
[datasets.x]
type = "classification"
format = "wds"
root = "wx"
protocols = ["zeroshot"]
[datasets.z]
type = "classification"
format = "wds"
root = "wz"
protocols = ["zeroshot"]
[[gates]]
metric = "acc1"
dataset = "z"
max = 0.9
""")
    s = load_suite(tmp_path / "sub" / "top.toml")
    assert list(s.models) == ["a", "b"] and s.models["b"].baseline == "a"
    assert list(s.datasets) == ["x", "y", "z"]
    x = s.datasets["x"]
    assert (x.format, x.protocols, x.options) == ("wds", ("zeroshot",), {})  # replaced whole
    assert x.root == str(tmp_path / "sub" / "wx")  # relative to the including file
    assert s.datasets["y"].root == str(tmp_path / "data" / "y")  # relative to the included file
    assert [g.dataset for g in s.gates] == [None, "z"]
    assert s.name == "top"
    (tmp_path / "base.toml").write_text('[suite]\ninclude = "sub/top.toml"\n')
    with pytest.raises(SuiteError, match=r"includes itself \(cycle\)"):
        load_suite(tmp_path / "sub" / "top.toml")
    (tmp_path / "sub" / "top.toml").write_text('[suite]\ninclude = "nope.toml"\n')
    with pytest.raises(SuiteError, match=r"nope.toml: suite file not found \(included by"):
        load_suite(tmp_path / "sub" / "top.toml")
    with pytest.raises(SuiteError, match=r"\[suite\] include: expected a suite file path"):
        parse_suite("[suite]\ninclude = 3\n", str(tmp_path / "s.toml"))
