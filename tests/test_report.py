"""report.md tables (marks, Avg, captions, GELO vs Δ, n/r, --ci, baseline/paper comparison),
exports (CSV, CLIP_benchmark JSON), figures (axes, series, legends) and the merge command."""

import csv
import io
import json
import re

import numpy as np
import pytest

from harness.report import ReportOptions, protocol_table, render_run, summary_table
from harness.results import CaseRecord, ResultStore, RunData, load_run

RUN = {"suite": "t", "suite_description": "a test suite",
       "models": {"base": {"label": "Base", "baseline": None},
                  "ft": {"label": "FT", "baseline": "base"}},
       "datasets": {"x": {"label": "X"}, "y": {"label": "Y"}, "f": {"label": "Faces"}}}


def R(model, dataset, protocol, status="passed", **metrics):
    return CaseRecord(model, dataset, protocol, status=status, metrics=metrics)


def rows(table):
    return {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in table.splitlines()[2:]}


def test_failed_gate_shows_its_value_and_avg_is_not_over_one_dataset():
    """Issue 11 defect 2: the failed value was '–', Avg was over one dataset and bolded."""
    recs = [R("base", "x", "zeroshot", acc1=0.80), R("base", "y", "zeroshot", acc1=0.60),
            R("ft", "x", "zeroshot", acc1=0.7780), R("ft", "y", "zeroshot", "failed", acc1=0.356)]
    t = protocol_table(recs, "zeroshot", {"base": "Base", "ft": "FT"}, {"x": "X", "y": "Y"},
                       {"base": None, "ft": "base"})
    r = rows(t)
    assert r["FT"][1] == "35.60 ✗"
    assert r["FT"][2].startswith("56.70") and "**" not in r["FT"][2]   # (77.80 + 35.60) / 2
    assert r["Base"][2] == "**70.00**"
    # GELO only over passed numbers: x alone
    assert r["FT"][3] == f"{0.778 / 0.80:.3f}"


def test_distinct_marks_and_avg_over_common_datasets():
    recs = [R("base", "x", "zeroshot", acc1=0.5), R("base", "y", "zeroshot", acc1=0.7),
            R("ft", "x", "zeroshot", acc1=0.4), R("ft", "y", "zeroshot", "skipped"),
            R("base", "f", "zeroshot", "error"), R("ft", "f", "zeroshot", "not run")]
    t = protocol_table(recs, "zeroshot", {"base": "Base", "ft": "FT"},
                       {"x": "X", "y": "Y", "f": "F"}, {"ft": "base"})
    head = [c.strip() for c in t.splitlines()[0].split("|")[1:-1]]
    assert head == ["Model", "X", "Y", "F", "Avg (1 of 3)", "GELO"]
    r = rows(t)
    assert r["FT"][1:3] == ["s", "·"] and r["Base"][2] == "E"
    assert r["Base"][3] == "**50.00**" and r["FT"][3] == "40.00"   # both over X only


def test_biometric_tables_give_delta_in_points_not_gelo():
    """Issue 11 defect 3."""
    recs = [R("base", "f", "verification", accuracy=0.60), R("ft", "f", "verification", accuracy=0.86)]
    t = protocol_table(recs, "verification", {"base": "Base", "ft": "FT"}, {"f": "Faces"},
                       {"ft": "base"})
    assert "GELO" not in t and "Δ vs base (pts)" in t
    assert rows(t)["FT"][-1] == "+26.00"
    store = ResultStore(None, {}, {"ft": "base"})
    for r in recs:
        store.records[r.key] = r
    assert store.to_json()["gelo"] == {}


def test_unresolvable_operating_point_is_n_r_and_out_of_averages():
    """Issue 11 defect 4."""
    a = R("base", "f", "ijb", **{"tar@far=1e-4": 0.1667, "tar@far=1e-1": 0.5})
    a.details = {"tar@far=1e-4": {"resolvable": False}}
    b = R("base", "y", "ijb", **{"tar@far=1e-4": 0.5})
    t = protocol_table([a, b], "ijb", {"base": "Base"}, {"f": "F", "y": "Y"}, {})
    r = rows(t)["Base"]
    assert r[0] == "n/r" and "16.67" not in t
    assert r[2].strip("*").startswith("50.00")   # average over Y only


def test_report_captions_legend_ci_and_threshold_source():
    mad = R("base", "f", "mad", eer=0.3)
    mad.details = {"threshold_source": "dev-eer", "metric_rule": "madation"}
    mad.ci = {"eer": [0.2, 0.4]}
    mad.ci_method = {"eer": "bootstrap over samples"}
    mad.n = {"bona_fide": 90, "attack": 90}
    z = R("base", "x", "zeroshot", acc1=0.5)
    z.ci = {"acc1": [0.4, 0.6]}
    z.n = {"images": 100}
    text = render_run(None, [mad, z], RUN, ReportOptions(show_ci=True)).replace("**", "")
    assert "a test suite" in text
    assert "50.00 [40.0, 60.0]" in text and "30.00 [20.0, 40.0]" in text
    assert "Threshold: dev-eer; metric rule: madation" in text
    assert text.count("✗ failed (the measured value is shown beside it)") >= 2
    assert "GELO: the model's mean" in text and "Δ vs base" in text
    assert "| Faces" in text and "90 bona fide, 90 attack" in text
    without = render_run(None, [mad, z], RUN, ReportOptions())
    assert "[40.0, 60.0]" not in without


def test_report_lists_not_run_and_says_interrupted_and_warns_with_paths():
    a = R("base", "x", "zeroshot", acc1=0.5)
    a.details = {"dropped_images": [f"test/3/bad{i}.png" for i in range(25)],
                 "warnings": ["feature cache entry /c/e.npz unreadable; recomputing"]}
    b = R("ft", "x", "zeroshot", "not run")
    text = render_run(None, [a, b], RUN, ReportOptions(interrupted=True))
    assert "**The run was interrupted**" in text
    assert "| zeroshot[ft-x] | not run | did not run |" in text
    assert "x: unreadable image dropped: test/3/bad0.png" in text
    assert "/c/e.npz unreadable; recomputing" in text
    assert "… and 6 more" in text   # 26 warnings, 20 shown


def test_demo_report_says_what_it_is():
    text = render_run(None, [R("base", "x", "zeroshot", acc1=0.5)], {**RUN, "demo": True})
    assert "models are tiny" in text and "synthetic" in text


def test_summary_table_one_row_per_fine_tuned_model():
    recs = [R("base", "f", "verification", accuracy=0.6), R("ft", "f", "verification", accuracy=0.86),
            R("base", "f", "mad", eer=0.4), R("ft", "f", "mad", eer=0.3),
            R("base", "x", "zeroshot", acc1=0.8), R("ft", "x", "zeroshot", acc1=0.4),
            R("base", "x", "linear_probe", acc1=0.9), R("ft", "x", "linear_probe", acc1=0.81)]
    t = summary_table(recs, {"base": "Base", "ft": "FT"}, {"base": None, "ft": "base"})
    assert list(rows(t)) == ["FT"]
    assert rows(t)["FT"] == ["Base", "+26.00", "-10.00", "0.500", "0.900"]


def test_comparison_table_against_paper_reference(tmp_path):
    p = tmp_path / "paper.json"
    p.write_text(json.dumps({"run": {"suite": "paper reference"}, "cases": [
        {"model": "ft", "dataset": "x", "protocol": "zeroshot", "metrics": {"acc1": 0.60}},
        {"model": "base", "dataset": "x", "protocol": "zeroshot", "metrics": {"acc1": 0.50}}]}))
    recs = [R("ft", "x", "zeroshot", acc1=0.45), R("base", "x", "zeroshot", acc1=0.505)]
    text = render_run(None, recs, RUN, ReportOptions(baseline=load_run(p), max_drop=1.0))
    assert "## Against the paper (paper.json)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| zeroshot[FT-X]"))
    assert [c.strip() for c in line.split("|")[2:-1]] == ["acc1 ↑", "60.00", "45.00", "-15.00", "outside (> 1)"]
    line = next(ln for ln in text.splitlines() if ln.startswith("| zeroshot[Base-X]"))
    assert line.rstrip("| ").endswith("within")
    assert "| paper " in text.replace("|   paper", "| paper")


# ------------------------------------------------------------------------------ exports

def test_csv_long_format_and_clip_benchmark_json(tmp_path):
    from harness.export import CSV_COLUMNS, write_exports

    a = R("ft", "x", "zeroshot", acc1=0.25, acc5=0.5, mean_per_class_recall=0.3)
    a.n = {"images": 4}
    a.ci = {"acc1": [0.1, 0.6]}
    b = R("ft", "y", "linear_probe", "skipped")
    run = {**RUN, "models": {"ft": {"label": "FT", "pretrained": "openai", "checkpoint": "/w/ft.pt"}}}
    write_exports(tmp_path, [a, b], run)
    got = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert tuple(got[0]) == CSV_COLUMNS
    acc1 = next(r for r in got if r["metric"] == "acc1")
    assert (float(acc1["value"]), acc1["n"], float(acc1["ci_low"]), float(acc1["ci_high"]), acc1["status"]) == \
        (0.25, "4", 0.1, 0.6, "passed")
    assert next(r for r in got if r["metric"] == "acc5")["ci_low"] == ""
    assert [r["status"] for r in got if r["dataset"] == "y"] == ["skipped"]
    files = sorted((tmp_path / "clip_benchmark").iterdir())
    assert [f.name for f in files] == ["ft--x--zeroshot_classification.json"]
    d = json.loads(files[0].read_text())
    assert set(d) >= {"dataset", "model", "pretrained", "task", "metrics"}
    assert (d["dataset"], d["model"], d["pretrained"], d["task"]) == ("x", "ft", "/w/ft.pt", "zeroshot_classification")
    assert d["metrics"] == {"acc1": 0.25, "acc5": 0.5, "mean_per_class_recall": 0.3}


# ------------------------------------------------------------------------------ scores

def test_scores_file_layout(tmp_path):
    from harness.scores import ScoreSet, load_scores, relative_paths, save_scores, score_file

    root = tmp_path / "data"
    paths = relative_paths([str(root / "bona" / "a.png"), (str(root / "atk" / "b.png"), 1), b"raw"], root)
    assert paths.tolist() == ["bona/a.png", "atk/b.png", "#2"]
    s = ScoreSet([0.9, 0.1, 0.2], np.array([True, False, False]), paths=paths,
                 attack_types=["x", "print", "replay"])
    p = score_file(tmp_path / "scores", "pad", "m/1", "d")
    assert p == tmp_path / "scores" / "pad" / "m_1--d.npz"
    save_scores(p, s)
    with np.load(p, allow_pickle=False) as z:
        assert z["scores"].dtype == np.float64 and z["labels"].dtype == np.int8
        assert z["labels"].tolist() == [1, 0, 0]
        assert z["attack_types"].tolist() == ["", "print", "replay"]   # empty for bona fide
        assert z["paths"].tolist() == ["bona/a.png", "atk/b.png", "#2"]
    assert load_scores(p).scores.tolist() == [0.9, 0.1, 0.2]
    with pytest.raises(ValueError, match="labels must be 0/1"):
        ScoreSet([0.1], [2])


# ------------------------------------------------------------------------------ figures

def test_figures_have_axes_series_and_legends():
    from harness.plots import curve, relative_change_figure, roc_det_figure, tar_far_figure, tradeoff_figure

    recs = [R("base", "f", "verification", accuracy=0.6), R("ft", "f", "verification", accuracy=0.86),
            R("ft2", "f", "verification", accuracy=0.5),
            R("base", "x", "zeroshot", acc1=0.8), R("ft", "x", "zeroshot", acc1=0.4),
            R("ft2", "x", "zeroshot", acc1=0.7),
            R("base", "x", "linear_probe", acc1=0.9), R("ft", "x", "linear_probe", acc1=0.81),
            R("ft2", "x", "linear_probe", acc1=0.88)]
    models = {"base": "Base", "ft": "FT", "ft2": "FT2"}
    bases = {"base": None, "ft": "base", "ft2": "base"}
    fig = tradeoff_figure(recs, "verification", models, bases)
    ax = fig.axes[0]
    assert "percentage points" in ax.get_xlabel() and "GELO" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["FT", "FT2", "zeroshot GELO", "linear_probe GELO"]
    xy = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert sorted(map(tuple, np.round(xy, 6))) == sorted([(26.0, 0.5), (26.0, 0.9), (-10.0, 0.875),
                                                          (-10.0, round(0.88 / 0.9, 6))])
    fig = relative_change_figure(recs, models, bases, {"x": "X"})
    assert len(fig.axes) == 2 and "relative change" in fig.axes[0].get_ylabel()
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches)
    assert heights == sorted([-50.0, round(100 * (0.7 / 0.8 - 1), 6)])
    y = np.array([1, 1, 0, 0, 0])
    far, tar = curve(np.array([0.9, 0.4, 0.5, 0.1, 0.2]), y)
    assert far.tolist() == [0, 0, 1 / 3, 1 / 3, 2 / 3, 1] and tar.tolist() == [0, 0.5, 0.5, 1, 1, 1]
    curves = {"A": (far, tar, 2, 3), "B": (far, tar, 2, 3)}
    fig = roc_det_figure(curves, "pad", "Spoofs")
    roc, det = fig.axes
    assert roc.get_xlabel().startswith("APCER") and det.get_ylabel().startswith("BPCER")
    assert len(roc.get_lines()) == 2 and [t.get_text() for t in det.get_legend().get_texts()] == ["A", "B"]
    fig = tar_far_figure(curves, "IJB", [1e-2])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel().startswith("FAR") and ax.get_ylabel().startswith("TAR")
    assert "not resolvable" in ax.get_legend().get_texts()[-1].get_text()


def test_make_plots_writes_pngs(tmp_path):
    from harness.plots import make_plots
    from harness.scores import ScoreSet

    rng = np.random.default_rng(0)
    recs = [R("base", "f", "verification", accuracy=0.6), R("ft", "f", "verification", accuracy=0.86),
            R("base", "x", "zeroshot", acc1=0.8), R("ft", "x", "zeroshot", acc1=0.4)]
    y = np.r_[np.ones(50), np.zeros(50)]
    made = make_plots(tmp_path, recs, RUN, lambda r: ScoreSet(rng.normal(size=100) + y, y)
                      if r.protocol == "verification" else None)
    names = [n for _, n in made]
    assert names == ["tradeoff-verification.png", "relative-change.png", "roc-det-verification-f.png"]
    for n in names:
        data = (tmp_path / n).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# ------------------------------------------------------------------------------- merge

def test_merge_of_two_halves_equals_the_single_run(tmp_path):
    from harness.merge import main
    from harness.output import write_outputs

    recs = [R(m, d, p, acc1=v) for (m, d, p, v) in [
        ("base", "x", "zeroshot", 0.8), ("base", "y", "zeroshot", 0.6), ("ft", "x", "zeroshot", 0.5),
        ("ft", "y", "zeroshot", 0.3), ("base", "x", "linear_probe", 0.9), ("ft", "x", "linear_probe", 0.85)]]
    recs.append(R("ft", "f", "verification", "skipped"))
    recs[0].n = {"images": 100}
    recs[0].ci = {"acc1": [0.7, 0.9]}

    def save(path, rs, started):
        st = ResultStore(path, {**RUN, "started": started}, {"ft": "base"})
        for r in rs:
            st.records[r.key] = r
        st.close()
    save(tmp_path / "single" / "results.json", recs, "2026-01-01T00:00:00")
    single = write_outputs(tmp_path / "single", recs, {**RUN, "started": "2026-01-01T00:00:00",
                                                        "model_loads": {}}, show_ci=True).report
    save(tmp_path / "a" / "results.json", recs[1::2], "2026-01-01T00:00:05")
    save(tmp_path / "b" / "results.json", recs[0::2], "2026-01-01T00:00:03")
    assert main([str(tmp_path / "m"), str(tmp_path / "a" / "results.json"),
                 str(tmp_path / "b" / "results.json"), "--ci"]) == 0
    merged = (tmp_path / "m" / "report.md").read_text()

    def strip(t):
        return re.sub(r"started: [^,]*, ", "", t)
    assert strip(merged) == strip(single)
    assert "## Figures" in merged
    assert (tmp_path / "m" / "results.csv").read_text() == (tmp_path / "single" / "results.csv").read_text()
    assert len(load_run(tmp_path / "m" / "results.json").records) == len(recs)


def test_merge_bad_input_is_one_line(tmp_path, capsys):
    from harness.merge import main

    (tmp_path / "bad.json").write_text("{")
    assert main([str(tmp_path / "o"), str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err and "not valid JSON" in err


def test_rundata_is_plain():
    assert RunData.__dataclass_fields__.keys() >= {"path", "run", "records"}


def test_summary_table_says_n_r_where_the_headline_is_not_resolvable():
    """The demo's IJB (258 impostor pairs) cannot resolve TAR@FAR=1e-4: its Δ cell says n/r, not
    the "–" that means no passed case."""
    h = "tar@far=1e-4"
    recs = [R("base", "ijb", "ijb", **{h: 0.2}), R("ft", "ijb", "ijb", **{h: 0.3}),
            R("base", "f", "verification", accuracy=0.6)]
    for r in recs[:2]:
        r.details = {h: {"resolvable": False}}
    t = summary_table(recs, {"base": "Base", "ft": "FT"}, {"base": None, "ft": "base"})
    assert rows(t)["FT"] == ["Base", "–", "n/r"]  # verification: no passed case of FT; ijb: n/r
    recs[1].details = {}   # resolvable for the fine-tuned model, but not for its base
    recs[0].details = {h: {"resolvable": False}}
    t = summary_table(recs, {"base": "Base", "ft": "FT"}, {"base": None, "ft": "base"})
    assert "n/r" in rows(t)["FT"]
    recs[0].details = {}   # both resolvable: a number
    t = summary_table(recs, {"base": "Base", "ft": "FT"}, {"base": None, "ft": "base"})
    assert "+10.00" in rows(t)["FT"]
