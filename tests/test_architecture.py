"""The spine: protocol registry as the single source, one result type, pytest-free domain
modules (cases, gates, scoring) and no import cycle between fixtures and the plugin."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import protocols as P
from harness.cases import CaseSpec, timed
from harness.devices import check_device
from harness.errors import HarnessError, SuiteError
from harness.gates import check_options, drop_failures, gate_failures, load_baseline, validate_gates
from harness.scoring import DEFAULT_PROMPTS, ScoringUnavailable, dev_source, score, text_prompts
from harness.suite import Gate, parse_suite

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ registry

def test_registry_is_the_single_source_of_markers():
    m = P.markers()
    assert list(m)[:6] == ["zeroshot", "linear_probe", "verification", "ijb", "mad", "pad"]
    assert m["general"].endswith("(zeroshot, linear_probe)")
    assert m["biometric"].endswith("(verification, ijb, mad, pad)")
    for path in ("harness/plugin.py", "fixtures/__init__.py", "harness/results.py"):
        text = (REPO / path).read_text()
        assert "MARKERS" not in text and "LOWER_IS_BETTER" not in text, path


@pytest.mark.parametrize("metric, protocol, lower", [
    ("eer", "mad", True), ("eer[opencv]", "mad", True), ("auc", "pad", False),
    ("auc[opencv]", "mad", False), ("bpcer@apcer=0.1", "pad", True), ("apcer[print]", "pad", True),
    ("accuracy_std", "verification", True), ("accuracy", "verification", False),
    ("tar@far=1e-4", "ijb", False), ("acc1", "zeroshot", False), ("hter", None, True),
    ("acc5", None, False),
])
def test_lower_is_better_from_the_registry(metric, protocol, lower):
    assert P.lower_is_better(metric, protocol) is lower


def test_produced_metrics():
    assert P.produces("zeroshot", "acc5") and not P.produces("zeroshot", "eer")
    assert P.produces("mad", "bpcer@apcer=0.2[MIPGAN-I]") and not P.produces("pad", "eer[x]")
    assert P.produces("ijb", "tar@far=1e-6") and not P.produces("ijb", "accuracy")
    # every headline is produced and its direction known
    for info in P.PROTOCOLS.values():
        assert info.produces(info.headline), info.name
        assert info.gelo == (info.group == "general")  # GELO: general ability only


def test_every_protocol_returns_one_result_type():
    from harness.protocols import attack, ijb, linear_probe, verification, zeroshot

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), np.arange(40) % 4
    w = rng.normal(size=(6, 4)).astype(np.float32)
    results = [
        zeroshot.evaluate(x, y, w),
        linear_probe.evaluate(x, y, x, y, val_fraction=0.25),
        verification.evaluate(rng.normal(size=(40, 6)), np.arange(20) % 2 == 0, n_folds=2),
        ijb.evaluate(x, np.repeat(np.arange(10), 4), np.arange(40), None,
                     np.array([[0, 1], [2, 2], [3, 4], [5, 5]]), np.array([0, 1, 0, 1]),
                     detector_score_weight=False),
        attack.evaluate("pad", rng.uniform(size=20), np.arange(20) % 2),
    ]
    for name, r in zip(("zeroshot", "linear_probe", "verification", "ijb", "pad"), results):
        assert type(r) is P.ProtocolResult, name
        assert r.metrics and all(type(v) is float for v in r.metrics.values()), name
        assert isinstance(r.details, dict)
        assert all(P.produces(name, k) for k in r.metrics), (name, list(r.metrics))


# ------------------------------------------------------------------------------ cases

def test_case_spec_and_timing():
    c = CaseSpec("mad", "tiny-mad", "morphs-probe")
    assert c.id == "tiny-mad-morphs-probe" and c.key == ("mad", "tiny-mad", "morphs-probe")
    ticks = iter([10.0, 12.5])
    out, t = timed(lambda a, b=0: a + b, 2, b=3, n_images=100, clock=lambda: next(ticks))
    assert out == 5 and t.seconds == 2.5 and t.images_per_second == 40.0
    assert t.details() == {"protocol_seconds": 2.5, "protocol_images_per_second": 40.0}
    ticks = iter([1.0, 1.0])
    _, t = timed(lambda: None, clock=lambda: next(ticks))
    assert t.images_per_second is None and t.details() == {"protocol_seconds": 0.0}


def test_check_device():
    check_device(None)
    check_device("cpu")
    for bad in ("tpu", "cuda:x", "mps:1", "cpu:0"):
        with pytest.raises(HarnessError, match=f"--device {bad}: expected cpu, cuda, cuda:N, cuda:N,M,... or mps"):
            check_device(bad)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(HarnessError, match="CUDA is not available"):
            check_device("cuda:0")


# ------------------------------------------------------------------------------ gates

def test_gate_and_drop_failures_by_hand():
    gates = [Gate("acc1", protocol="zeroshot", min=0.5), Gate("eer", max=0.2),
             Gate("acc5", protocol="zeroshot", model="b", min=0.9)]
    assert gate_failures(gates, "zeroshot", "a", "d", {"acc1": 0.6}) == []
    assert gate_failures(gates, "zeroshot", "a", "d", {"acc1": 0.4}) == [
        "acc1 40.0% < min 50.0% (zeroshot a/d)"]
    # acc5 is produced by zeroshot but missing (fewer than 5 classes): reported
    assert gate_failures(gates, "zeroshot", "b", "d", {"acc1": 0.6}) == [
        "gate on acc5: metric not produced (zeroshot b/d)"]
    assert gate_failures(gates, "pad", "a", "d", {"eer": 0.25}) == ["eer 25.0% > max 20.0% (pad a/d)"]
    base = {("zeroshot", "a", "d"): {"acc1": 0.80, "acc5": 0.9}, ("pad", "a", "d"): {"hter": 0.10}}
    assert drop_failures("zeroshot", "a", "d", {"acc1": 0.77, "acc5": 0.95}, base, 2.0) == [
        "acc1 lost 3.00 points: 80.0% -> 77.0% (max-drop 2) (zeroshot a/d)"]
    assert drop_failures("zeroshot", "a", "d", {"acc1": 0.79}, base, 2.0) == []
    # lower is better: HTER up by 3 points is a loss, down is not
    assert drop_failures("pad", "a", "d", {"hter": 0.13}, base, 2.0) == [
        "hter lost 3.00 points: 10.0% -> 13.0% (max-drop 2) (pad a/d)"]
    assert drop_failures("pad", "a", "d", {"hter": 0.01}, base, 2.0) == []
    assert drop_failures("pad", "a", "other", {"hter": 0.9}, base, 2.0) == []
    assert drop_failures("pad", "a", "d", {"hter": 0.9}, base, None) == []


def test_options_and_baseline_file(tmp_path):
    check_options(None, None)
    check_options("x.json", 1.0)
    with pytest.raises(HarnessError, match="--max-drop 1 needs --baseline"):
        check_options(None, 1.0)
    with pytest.raises(HarnessError, match="--baseline x.json needs --max-drop"):
        check_options("x.json", None)
    with pytest.raises(HarnessError, match="file not found"):
        load_baseline(tmp_path / "nope.json")
    with pytest.raises(HarnessError, match="is a folder"):
        load_baseline(tmp_path)
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(HarnessError, match="bad.json"):
        load_baseline(tmp_path / "bad.json")
    (tmp_path / "r.json").write_text(json.dumps({"cases": [
        {"model": "a", "dataset": "d", "protocol": "zeroshot", "status": "passed",
         "metrics": {"acc1": 0.5}},
        {"model": "b", "dataset": "d", "protocol": "zeroshot", "status": "failed",
         "metrics": {"acc1": 0.1}}]}))
    assert load_baseline(tmp_path / "r.json") == {("zeroshot", "a", "d"): {"acc1": 0.5}}


def test_validate_gates():
    base = """
[models.m]
arch = "ViT-B-16"

[datasets.d]
type = "classification"
format = "imagefolder"
root = "/x"
protocols = ["zeroshot"]

[datasets.f]
type = "verification"
format = "insightface-bin"
root = "/f.bin"
protocols = ["verification"]
"""
    ok = base + '[[gates]]\nmetric = "accuracy"\nmin = 0.5\n'
    validate_gates(parse_suite(ok, "/s.toml"))
    for gate, msg in (('metric = "eer"\nmax = 0.5', "'eer' is not produced by zeroshot/verification"),
                      ('metric = "accuracy"\ndataset = "d"\nmin = 0.5', "'accuracy' is not produced by zeroshot")):
        suite = parse_suite(base + "[[gates]]\n" + gate + "\n", "/s.toml")
        with pytest.raises(SuiteError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            validate_gates(suite)
    suite = parse_suite(base + '[[gates]]\nmetric = "acc1"\nprotocol = "ijb"\nmin = 0.5\n', "/s.toml")
    with pytest.raises(SuiteError, match="'acc1' is not produced by ijb; expected one of tar@far="):
        validate_gates(suite)


# ------------------------------------------------------------------------------ scoring

class _Head:
    def score(self, x):
        return x[:, 0] * 2.0


def test_scoring_modes():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    assert np.array_equal(score("head", "mad", x, model_id="m", head=_Head()), [2.0, 0.0, 1.2])
    with pytest.raises(ScoringUnavailable, match="model 'm' has no task head"):
        score("head", "mad", x, model_id="m")
    # text: the class embeddings are the prompts' embeddings (one prompt each) -> logistic of
    # 100 (cos(x, bona) - cos(x, attack)), worked by hand for unit rows
    emb = {"a bona-fide presentation": [1.0, 0.0], "a biometric presentation attack": [0.0, 1.0]}
    s = score("text", "pad", x, model_id="m",
              text_embeddings=lambda texts: np.array([emb[t] for t in texts]))
    z = 100 * (x[:, 0] - x[:, 1])
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-z)), rtol=0, atol=1e-12)
    with pytest.raises(HarnessError, match=r"\[datasets.d\] scoring = 'probe' needs a train split"):
        score("probe", "pad", x, model_id="m", where="s.toml: [datasets.d] ")
    rng = np.random.default_rng(0)
    xtr = np.r_[rng.normal(1, 0.3, (20, 2)), rng.normal(-1, 0.3, (20, 2))]
    ytr = np.r_[np.ones(20), np.zeros(20)]
    s = score("probe", "pad", np.array([[1.0, 1.0], [-1.0, -1.0]]), model_id="m",
              train=lambda: (xtr, ytr))
    assert s[0] > 0.9 and s[1] < 0.1
    with pytest.raises(ValueError, match="scoring must be one of"):
        score("magic", "pad", x, model_id="m")


def test_prompts_and_dev_source():
    assert text_prompts("mad") == (DEFAULT_PROMPTS["bona_fide"], DEFAULT_PROMPTS["mad"])
    assert text_prompts("pad", ["real"], ["fake", "mask"]) == (["real"], ["fake", "mask"])
    with pytest.raises(ValueError):
        text_prompts("zeroshot")
    assert dev_source("test-eer", None, ["test"]).kind == "none"
    assert dev_source(0.5, "other", ["test"]).kind == "none"
    assert dev_source("dev-eer", "other", ["test", "dev"]) == dev_source("dev-eer", "other", [])
    assert dev_source("dev-eer", "other", []).dataset == "other"
    assert dev_source("dev-eer", None, ["test", "dev"]).kind == "split"
    with pytest.raises(SuiteError, match=r"needs a 'dev' split or dev = 'DATASET_ID'; the dataset has \['test'\]"):
        dev_source("dev-eer", None, ["test"])


# ------------------------------------------------------------------------------ layout

def _imports(path: Path, top_level: bool = False) -> set[str]:
    out = set()
    tree = ast.parse(path.read_text())
    for node in (tree.body if top_level else ast.walk(tree)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_no_cycle_fixtures_plugin():
    for f in (REPO / "fixtures").rglob("*.py"):
        assert "harness.plugin" not in _imports(f), f
        assert not any(m == "fixtures" or m.startswith("fixtures.") for m in _imports(f)), f
    for f in ("harness/cases.py", "harness/gates.py", "harness/scoring.py"):
        # torch only inside the functions that need a device
        assert not {m for m in _imports(REPO / f, top_level=True) if m.split(".")[0] in ("pytest", "torch", "fixtures",
                                                                       "tradeoff_bench_fixtures")}


def test_domain_modules_import_without_pytest_or_torch():
    code = ("import sys; import harness.cases, harness.gates, harness.scoring, harness.suite; "
            "print(sorted(m for m in ('pytest', 'torch', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
