"""Trade-off matrix, GELO, results store and report rendering."""

import json
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.results import (CaseRecord, ResultStore, average, gelo, gelo_table, load_results,
                             matrix, protocol_table, render_report)

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


def test_store_writes_after_every_update_and_reads_back(tmp_path):
    path = tmp_path / "r" / "results.json"
    store = ResultStore(path, {"suite": "s"}, {"ft": "base", "base": None})
    store.add_pending(CaseRecord("base", "x", "zeroshot"))
    store.add_pending(CaseRecord("ft", "x", "zeroshot"))
    store.write()
    data = json.loads(path.read_text())
    assert [c["status"] for c in data["cases"]] == ["not run", "not run"]
    store.update(rec("base", "x", 0.8))
    data = json.loads(path.read_text())  # written as the case ended
    assert data["cases"][0]["status"] == "passed" and data["cases"][0]["metrics"] == {"acc1": 0.8}
    store.update(rec("ft", "x", 0.4))
    data = json.loads(path.read_text())
    assert data["gelo"] == {"zeroshot": {"ft": 0.5}}
    back = load_results(path)
    assert {(r.model, r.metrics["acc1"]) for r in back} == {("base", 0.8), ("ft", 0.4)}


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
