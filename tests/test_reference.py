"""benchmarks/suites/paper.reference.json: the study's published cells as a results file."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from harness import reference as R
from harness.errors import HarnessError
from harness.results import load_results
from harness.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "benchmarks" / "suites"
REF = SUITES / "paper.reference.json"
CSV = SUITES / "paper_tables.csv"


def csv_cells():
    with CSV.open(encoding="utf-8") as f:
        return [r for r in csv.reader(f) if r and not r[0].startswith("#")]


def test_shipped_file_is_what_the_generator_writes():
    assert REF.read_text(encoding="utf-8") == R.render(R.build(CSV, SUITES / "paper.toml"))


def test_every_id_exists_in_the_paper_suite():
    suite = load_suite(SUITES / "paper.toml")
    doc = json.loads(REF.read_text(encoding="utf-8"))
    assert doc["cases"]
    for c in doc["cases"]:
        assert c["model"] in suite.models, c
        assert c["dataset"] in suite.datasets, c
        assert c["protocol"] in suite.datasets[c["dataset"]].protocols, c
    for table in doc["gelo"].values():
        assert set(table) <= set(suite.models)
        assert all(suite.models[m].baseline for m in table)     # GELO is of fine-tuned models
    assert set(doc["paper"]["mad"]) <= set(suite.models)


def test_every_cell_is_placed_once_with_its_value():
    doc = json.loads(REF.read_text(encoding="utf-8"))
    cells = csv_cells()
    placed = []
    for c in doc["cases"]:
        for metric, v in c["metrics"].items():
            placed.append((c["source"]["table"], c["model"], c["source"]["columns"][metric], 100 * v))
    for table, models in doc["paper"]["avg"].items():
        placed += [(table, m, "Avg.", 100 * v) for m, v in models.items()]
    for table, models in doc["paper"]["gelo"].items():
        placed += [(table, m, "GELO", v) for m, v in models.items()]
    mad_cols = {"eer": "MAD EER"} | {f"{a}@{b}={p / 100:g}": f"MAD {a.upper()}@{b.upper()}={p}"
                                     for a, b in (("apcer", "bpcer"), ("bpcer", "apcer"))
                                     for p in (1, 10, 20)}
    for m, metrics in doc["paper"]["mad"].items():
        placed += [("biometric", m, mad_cols[k], 100 * v) for k, v in metrics.items()]
    expected = {(t, R.model_id(a, arch), col): float(v) for t, a, arch, col, v in cells}
    assert len(placed) == len(cells) == len(expected) == 372
    got = {(t, m, col): v for t, m, col, v in placed}
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert math.isclose(got[k], v, rel_tol=0, abs_tol=1e-9), k
    # fractions in [0, 1] for every metric (GELO is a ratio and lives outside the cases)
    assert all(0 <= v <= 1 for c in doc["cases"] for v in c["metrics"].values())


def test_hand_checked_cells():
    doc = json.loads(REF.read_text(encoding="utf-8"))
    cases = {(c["protocol"], c["model"], c["dataset"]): c["metrics"] for c in doc["cases"]}
    assert cases[("zeroshot", "clip-b16", "food101")] == {"acc1": 0.8822}
    assert cases[("verification", "froundation-l14", "lfw")] == {"accuracy": 0.9965}
    assert cases[("ijb", "froundation-b16", "ijbc")] == {"tar@far=1e-4": 0.8563}
    assert cases[("pad", "foundpad-b16", "celeba_spoof")] == {"hter": 0.156, "auc": 0.91}
    assert ("linear_probe", "clip-b16", "imagenetv2") not in cases      # no train split
    assert doc["gelo"]["zeroshot"]["froundation-b16"] == 0.688
    assert doc["paper"]["mad"]["madation-b16"]["bpcer@apcer=0.1"] == 0.2214
    assert doc["paper"]["avg"]["linear_probe"]["clip-l14"] == 0.8496
    assert len(cases) == 280


def test_loadable_as_a_baseline():
    recs = load_results(REF)
    assert len(recs) == 280 and all(r.status == "passed" for r in recs)
    assert sum(len(r.metrics) for r in recs) == 288


def test_generator_errors_name_the_cell(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("zeroshot,CLIP,B/16,NoSuchSet,12.5\n", encoding="utf-8")
    with pytest.raises(HarnessError, match="no dataset has label 'NoSuchSet'.*zeroshot,CLIP,B/16"):
        R.build(bad, SUITES / "paper.toml")
    bad.write_text("zeroshot,CLIP,H/14,Food101,12.5\n", encoding="utf-8")
    with pytest.raises(HarnessError, match="no model 'clip-h14'"):
        R.build(bad, SUITES / "paper.toml")
    bad.write_text("zeroshot,CLIP,B/16,Food101\n", encoding="utf-8")
    with pytest.raises(HarnessError, match="row 1: expected table,approach,arch,column,value"):
        R.build(bad, SUITES / "paper.toml")
    assert R.main(["--csv", str(bad), "--out", str(tmp_path / "o.json")]) == 2
    assert R.main(["--csv", str(CSV), "--out", str(tmp_path / "o.json")]) == 0
    assert (tmp_path / "o.json").read_text(encoding="utf-8") == REF.read_text(encoding="utf-8")
