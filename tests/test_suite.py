"""Suite parsing: each structural mistake gives a one-line message naming file, table, key."""

from pathlib import Path

import pytest

from harness.errors import SuiteError
from harness.suite import load_suite, parse_suite, resolve_suite

GOOD = """
[suite]
name = "t"

[models.base]
arch = "ViT-B-16"
pretrained = "openai"

[models.ft]
arch = "ViT-B-16"
pretrained = "openai"
checkpoint = "${TB_TEST_CKPT}/ft.pt"
checkpoint_format = "clip-lora"
lora = { rank = 16, alpha = 32, scaling = "rslora" }
preprocess = { preset = "half", channel_order = "bgr" }
baseline = "base"

[datasets.digits]
type = "classification"
format = "imagefolder"
root = "data/digits"
prompts = "mnist"
protocols = ["zeroshot", "linear_probe"]
probe = "clip"

[datasets.lfw]
type = "verification"
format = "insightface-bin"
root = "/data/lfw.bin"
protocols = ["verification"]

[[gates]]
protocol = "zeroshot"
model = "base"
dataset = "digits"
metric = "acc1"
min = 0.5
"""


def parse(text, path="/suites/s.toml"):
    return parse_suite(text, path, Path("/suites"))


def test_good_suite_parses(monkeypatch):
    monkeypatch.delenv("TB_TEST_CKPT", raising=False)
    s = parse(GOOD)
    assert list(s.models) == ["base", "ft"]
    ft = s.models["ft"]
    assert ft.lora.rank == 16 and ft.lora.alpha == 32.0 and ft.lora.scaling == "rslora"
    assert ft.preprocess.preset == "half" and ft.preprocess.channel_order == "bgr"
    assert ft.missing_env == ("TB_TEST_CKPT",)
    assert s.models["base"].missing_env == ()
    d = s.datasets["digits"]
    assert d.root == "/suites/data/digits"  # relative to the suite file's folder
    assert d.option("probe") == "clip" and d.option("val_fraction") == 0.2
    assert s.gates[0].min == 0.5 and s.gates[0].applies("zeroshot", "base", "digits")
    assert not s.gates[0].applies("zeroshot", "ft", "digits")
    assert ("linear_probe", "ft", "digits") in s.cases() and len(s.cases()) == 6


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("TB_TEST_CKPT", "/weights")
    ft = parse(GOOD).models["ft"]
    assert ft.checkpoint == "/weights/ft.pt" and ft.missing_env == ()


@pytest.mark.parametrize("mutate, expected", [
    (lambda t: t.replace('probe = "clip"', 'probe = "clip"\ncolour = 1'),
     "[datasets.digits] colour: unknown key"),
    (lambda t: t.replace('pretrained = "openai"\n\n[models.ft]', 'pretraind = "openai"\n\n[models.ft]'),
     "[models.base] pretraind: unknown key"),
    (lambda t: t.replace('arch = "ViT-B-16"\npretrained = "openai"\n\n[models.ft]', 'pretrained = "openai"\n\n[models.ft]'),
     "[models.base] arch: missing required key"),
    (lambda t: t.replace('root = "/data/lfw.bin"\n', ''),
     "[datasets.lfw] root: missing required key"),
    (lambda t: t.replace('min = 0.5', 'min = "high"'),
     "[gates[0]] min: expected a number, got string 'high'"),
    (lambda t: t.replace('min = 0.5', 'min = 60'),
     "[gates[0]] min: expected a fraction in [0, 1]"),
    (lambda t: t.replace('baseline = "base"', 'baseline = "clip"'),
     "[models.ft] baseline: 'clip' names no model"),
    (lambda t: t.replace('protocols = ["verification"]', 'protocols = ["zeroshot"]'),
     "[datasets.lfw] protocols: protocol 'zeroshot' does not fit type = 'verification'"),
    (lambda t: t.replace('protocols = ["verification"]', 'protocols = ["zero_shot"]'),
     "[datasets.lfw] protocols: unknown protocol 'zero_shot'"),
    (lambda t: t + '\n[models.base]\narch = "x"\n', "not valid TOML"),
    (lambda t: t + '\n[datasets.base]\ntype = "pad"\nformat = "list"\nroot = "x"\nprotocols = ["pad"]\n',
     "[datasets.base]: duplicate id 'base'"),
    (lambda t: t.replace('type = "verification"', 'type = "faces"'),
     "[datasets.lfw] type: expected one of classification"),
    (lambda t: t.replace('lora = { rank = 16, alpha = 32, scaling = "rslora" }',
                         'lora = { rank = 16, alpha = 32 }'),
     "[models.ft] lora: checkpoint_format = 'clip-lora' needs"),
    (lambda t: t.replace('scaling = "rslora"', 'scaling = "sqrt"'),
     "[models.ft.lora] scaling: expected 'rslora'"),
    (lambda t: t.replace('protocols = ["zeroshot", "linear_probe"]', 'protocols = "zeroshot"'),
     "[datasets.digits] protocols: expected a list of protocol names, got string"),
    (lambda t: t.replace('preset = "half"', 'preset = "vit"'),
     "[models.ft.preprocess] preset: expected one of 'clip', 'imagenet', 'half'"),
    (lambda t: t.replace('probe = "clip"', 'probe = "sgd"'),
     "[datasets.digits] probe: expected one of 'clip', 'clip-benchmark'"),
    (lambda t: t.replace('metric = "acc1"', 'metric = "acc1"\nmodel2 = "x"'),
     "[gates[0]] model2: unknown key"),
    (lambda t: t.replace('model = "base"\ndataset', 'model = "nope"\ndataset'),
     "[gates[0]] model: 'nope' names no model"),
    (lambda t: t.replace('[models.base]', '[models.base-]'), "[models.base-]: ids use letters"),
])
def test_mistakes_give_one_line_messages(mutate, expected):
    with pytest.raises(SuiteError) as ei:
        parse(mutate(GOOD))
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("/suites/s.toml")
    assert expected in msg, msg


def test_load_and_resolve(tmp_path):
    (tmp_path / "mine.toml").write_text(GOOD)
    assert resolve_suite("mine", tmp_path) == tmp_path / "mine.toml"
    s = load_suite(tmp_path / "mine.toml")
    assert s.datasets["digits"].root == str(tmp_path / "data" / "digits")
    with pytest.raises(SuiteError, match="available suites: mine"):
        resolve_suite("other", tmp_path)
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "none.toml")


def test_shipped_suites_parse():
    root = Path(__file__).resolve().parents[1] / "benchmarks" / "suites"
    names = sorted(p.stem for p in root.glob("*.toml"))
    assert {"demo", "paper"} <= set(names)
    for n in names:
        load_suite(root / f"{n}.toml")
    paper = load_suite(root / "paper.toml")
    assert len(paper.models) == 8
    for m in paper.models.values():
        if m.id.startswith("clip-"):
            assert m.baseline is None and m.pretrained == "openai"
        else:
            assert m.baseline in ("clip-b16", "clip-l14")


def test_defaults_for_variables_yield_to_the_environment(monkeypatch):
    text = GOOD.replace('root = "data/digits"', 'root = "${TB_DEMO}/digits"')
    monkeypatch.delenv("TB_DEMO", raising=False)
    s = parse_suite(text, "/suites/s.toml", Path("/suites"), defaults={"TB_DEMO": "/cache/demo"})
    assert s.datasets["digits"].root == "/cache/demo/digits" and s.datasets["digits"].missing_env == ()
    monkeypatch.setenv("TB_DEMO", "/elsewhere")
    s = parse_suite(text, "/suites/s.toml", Path("/suites"), defaults={"TB_DEMO": "/cache/demo"})
    assert s.datasets["digits"].root == "/elsewhere/digits"
