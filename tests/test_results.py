"""Trade-off matrix, GELO, results store and report rendering."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.report import protocol_table, render_report
from harness.results import (
    JOURNAL_NAME,
    CaseRecord,
    ResultStore,
    average,
    gelo,
    gelo_table,
    load_results,
    load_run,
    matrix,
)

acc = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)
names = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=1, max_size=6, unique=True)


def rec(model, dataset, value, protocol="zeroshot", status="passed", metric="acc1"):
    return CaseRecord(model, dataset, protocol, status=status, metrics={metric: value})


@given(names, st.data())
def test_model_against_itself_has_gelo_one(datasets, data):
    vals = {d: data.draw(acc) for d in datasets}
    recs = [rec("m", d, v) for d, v in vals.items()] + [rec("b", d, v) for d, v in vals.items()]
    assert gelo(matrix(recs, "zeroshot"), "m", "b") == pytest.approx(1.0)


@given(names, st.data(), st.randoms())
def test_permuting_cases_changes_nothing(datasets, data, rnd):
    recs = [rec(m, d, data.draw(acc)) for d in datasets for m in ("ft", "base")]
    shuffled = recs[:]
    rnd.shuffle(shuffled)
    baselines = {"ft": "base", "base": None}
    a = gelo_table(recs, baselines)["zeroshot"]["ft"]
    b = gelo_table(shuffled, baselines)["zeroshot"]["ft"]
    assert a == pytest.approx(b, rel=1e-12)


@given(names, st.data())
def test_dataset_only_one_of_pair_has_is_not_averaged(datasets, data):
    vals_ft = {d: data.draw(acc) for d in datasets}
    vals_base = {d: data.draw(acc) for d in datasets}
    extra = data.draw(acc)
    recs = ([rec("ft", d, v) for d, v in vals_ft.items()] + [rec("base", d, v) for d, v in vals_base.items()]
            + [rec("ft", "only-ft", extra), rec("base", "only-base", data.draw(acc))])
    expected = (sum(vals_ft.values()) / len(datasets)) / (sum(vals_base.values()) / len(datasets))
    assert gelo(matrix(recs, "zeroshot"), "ft", "base") == pytest.approx(expected, rel=1e-12)


def test_gelo_hand_worked():
    recs = [rec("ft", "x", 0.5), rec("ft", "y", 0.7), rec("base", "x", 0.8), rec("base", "y", 0.8),
            rec("ft", "z", 0.9, status="failed")]  # failed cases are not in the matrix
    m = matrix(recs, "zeroshot")
    assert m == {"ft": {"x": 0.5, "y": 0.7}, "base": {"x": 0.8, "y": 0.8}}
    assert gelo(m, "ft", "base") == pytest.approx(0.6 / 0.8)
    assert average(m["ft"]) == pytest.approx(0.6)
    assert gelo(m, "ft", "nobody") is None


def test_gelo_table_skips_lower_is_better_protocols():
    recs = [rec("ft", "x", 0.1, protocol="mad", metric="eer"), rec("base", "x", 0.2, protocol="mad", metric="eer"),
            rec("ft", "x", 0.5), rec("base", "x", 1.0)]
    t = gelo_table(recs, {"ft": "base", "base": None})
    assert t == {"zeroshot": {"ft": 0.5}}


def test_protocol_table_percent_bold_avg_gelo():
    recs = [rec("base", "x", 0.8), rec("base", "y", 0.6), rec("ft", "x", 0.4), rec("ft", "y", 0.9)]
    t = protocol_table(recs, "zeroshot", {"base": "CLIP | B", "ft": "FT"}, {"x": "X", "y": "Y"},
                       {"base": None, "ft": "base"})
    lines = t.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["Model", "X", "Y", "Avg", "GELO"]
    base_row = next(l for l in lines if "CLIP \\| B" in l)
    ft_row = next(l for l in lines if l.startswith("| FT"))
    assert "**80.00**" in base_row and "60.00" in base_row and "**70.00**" in base_row and "–" in base_row
    assert "40.00" in ft_row and "**90.00**" in ft_row and "65.00" in ft_row
    assert f"{0.65 / 0.70:.3f}" in ft_row


def test_lower_is_better_bolds_minimum():
    recs = [rec("a", "x", 0.1, protocol="mad", metric="eer"), rec("b", "x", 0.3, protocol="mad", metric="eer")]
    t = protocol_table(recs, "mad", {"a": "A", "b": "B"}, {"x": "X"}, {})
    assert "**10.00**" in t and "**30.00**" not in t


def test_store_writes_and_reads_back(tmp_path):
    path = tmp_path / "r" / "results.json"
    store = ResultStore(path, {"suite": "s"}, {"ft": "base", "base": None}, flush_interval=0)
    store.add_pending(CaseRecord("base", "x", "zeroshot"))
    store.add_pending(CaseRecord("ft", "x", "zeroshot"))
    store.write()
    data = json.loads(path.read_text())
    assert [c["status"] for c in data["cases"]] == ["not run", "not run"]
    store.update(rec("base", "x", 0.8))
    data = json.loads(path.read_text())  # flush_interval 0: written as the case ended
    assert data["cases"][0]["status"] == "passed" and data["cases"][0]["metrics"] == {"acc1": 0.8}
    store.update(rec("ft", "x", 0.4))
    data = json.loads(path.read_text())
    assert data["gelo"] == {"zeroshot": {"ft": 0.5}}
    back = load_results(path)
    assert {(r.model, r.metrics["acc1"]) for r in back} == {("base", 0.8), ("ft", 0.4)}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_store_batches_full_writes_and_journals_every_finished_case(tmp_path):
    """Issue 14.8: results.json is rewritten at most once per flush_interval; each finished
    record is in the journal at once, so a kill loses nothing (load_run replays it)."""
    path = tmp_path / "results.json"
    clock = Clock()
    store = ResultStore(path, {"suite": "s"}, {}, flush_interval=2.0, clock=clock)
    for i in range(1000):
        store.add_pending(CaseRecord("m", f"d{i}", "zeroshot"))
    store.flush()
    assert store.writes == 1
    for i in range(1000):
        clock.t = i * 0.01  # 1000 cases in 10 s
        store.update(CaseRecord("m", f"d{i}", "zeroshot", status="skipped", reason="no data"))
    assert store.writes <= 1 + 10 / 2.0 + 1
    # "killed" here: results.json is older, the journal holds the rest
    on_disk = json.loads(path.read_text())
    assert sum(c["status"] == "skipped" for c in on_disk["cases"]) < 1000
    back = load_run(path)
    assert sum(r.status == "skipped" for r in back.records) == 1000
    store.close()
    assert not (tmp_path / JOURNAL_NAME).exists()
    assert sum(c["status"] == "skipped" for c in json.loads(path.read_text())["cases"]) == 1000


def test_store_survives_a_full_disk_and_writes_when_space_returns(tmp_path, monkeypatch):
    """Issue 14.3: ENOSPC never raises; records stay in memory; the next flush retries."""
    import errno

    import harness.results as R

    path = tmp_path / "results.json"
    real = R.write_text_atomic
    full = {"on": True}

    def write(p, text):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(p, text)

    real_append = R._write_all

    def append(fd, data):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(fd, data)

    monkeypatch.setattr(R, "write_text_atomic", write)
    monkeypatch.setattr(R, "_write_all", append)
    store = ResultStore(path, {"suite": "s"}, {}, flush_interval=0)
    store.update(rec("a", "x", 0.5))
    store.update(rec("b", "x", 0.6))
    assert store.write_error and "No space left" in store.write_error and str(tmp_path) in store.write_error
    assert len(store.records) == 2 and not path.exists()
    full["on"] = False
    assert store.close() is True and store.write_error is None
    assert {c["model"] for c in json.loads(path.read_text())["cases"]} == {"a", "b"}


def test_atomic_write_uses_the_umask(tmp_path):
    """Issue 11 defect 8: files were created 0600 (mkstemp)."""
    import os

    from harness._io import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda f: f.write("x"))
        os.umask(0o077)
        atomic_write(tmp_path / "b.txt", lambda f: f.write("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_load_run_reads_everything_and_marks_paper_files(tmp_path):
    p = tmp_path / "ref.json"
    p.write_text(json.dumps({"run": {"suite": "paper reference"}, "cases": [
        {"model": "m", "dataset": "d", "protocol": "zeroshot", "metrics": {"acc1": 0.5},
         "n": {"images": 10}, "ci": {"acc1": [0.2, 0.8]}, "ci_method": {"acc1": "wilson"}}]}))
    rd = load_run(p)
    assert rd.is_paper and rd.label == "paper"
    r = rd.records[0]
    assert (r.status, r.n, r.ci, r.ci_method) == ("passed", {"images": 10}, {"acc1": [0.2, 0.8]},
                                                 {"acc1": "wilson"})
    p.write_text(json.dumps({"run": {"suite": "demo"}, "cases": []}))
    assert load_run(p).label == "baseline"


def test_load_results_errors(tmp_path):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="file not found"):
        load_results(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(HarnessError, match="not valid JSON"):
        load_results(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text('{"cases": [{"model": "m"}]}')
    with pytest.raises(HarnessError, match=r"cases\[0\] malformed"):
        load_results(tmp_path / "odd.json")


def test_report_lists_problems_with_reasons():
    recs = [rec("a", "x", 0.5), CaseRecord("a", "y", "zeroshot", status="skipped", reason="dataset 'y' needs ${D}")]
    text = render_report(recs, {"a": "A"}, {"x": "X", "y": "Y"}, {"a": None})
    assert "## zeroshot — acc1 ↑ (%)" in text
    assert "1 passed, 1 skipped" in text
    assert "| zeroshot[a-y] | skipped | dataset 'y' needs ${D} |" in text


def test_mad_method_table_rows_per_method_and_average():
    from harness.results import method_table

    m = {"eer": 0.2, "eer[opencv]": 0.1, "eer[webmorph]": 0.3, "apcer@bpcer=0.01": 0.5,
         "apcer@bpcer=0.01[opencv]": 0.4, "apcer@bpcer=0.01[webmorph]": 0.6}
    recs = [CaseRecord("mad-b16", "mad22", "mad", status="passed", metrics=m)]
    t = method_table(recs, "mad", "mad22", {"mad-b16": "MADation"},
                     metrics=("eer", "apcer@bpcer=0.01"))
    lines = t.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["Model", "Method", "eer ↓", "apcer@bpcer=0.01 ↓"]
    body = [[c.strip() for c in ln.split("|")[1:-1]] for ln in lines[2:]]
    assert body == [["MADation", "opencv", "10.00", "40.00"], ["MADation", "webmorph", "30.00", "60.00"],
                    ["MADation", "average", "20.00", "50.00"]]
