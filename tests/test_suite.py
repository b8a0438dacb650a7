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
    study = [m for m in paper.models if not m.endswith(("-oci", "-omi", "-icm"))]
    assert len(study) == 8 and len(paper.models) == 14
    for m in paper.models.values():
        assert m.pretrained == "openai"
        if m.id.startswith("clip-"):
            assert m.baseline is None
        elif m.id in study:
            assert m.baseline in ("clip-b16", "clip-l14")
    # presets: family keys written once, a model's own keys win key by key
    assert paper.models["madation-b16"].lora.alpha == 4.0 and paper.models["madation-l14"].lora.alpha == 8.0
    assert paper.models["madation-l14"].lora.rank == 2 and paper.models["madation-l14"].lora.scaling == "rslora"
    assert paper.models["foundpad-b16-oci"].preprocess == paper.models["foundpad-b16"].preprocess
    # one leave-one-out checkpoint per PAD target; none scores data it trained on
    # (O = OULU-NPU, C = CASIA-FASD, I = Replay-Attack, M = MSU-MFSD)
    targets = {"ocim_m": "M", "ocim_c": "C", "ocim_i": "I", "ocim_o": "O"}
    trained = {"": "OCM", "-oci": "OCI", "-omi": "OMI", "-icm": "ICM"}
    for d, letter in targets.items():
        chosen = paper.models_for(d)
        assert chosen and all(m.startswith("foundpad-") for m in chosen)
        for m in chosen:
            suffix = m[len("foundpad-b16"):]
            assert letter not in trained[suffix], (d, m)
    assert paper.models_for("celeba_spoof") == ["foundpad-b16", "foundpad-l14"]  # O&C&M, as in the study
    cases = paper.cases()
    assert not [c for c in cases if c[1].endswith(("-oci", "-omi", "-icm")) and c[0] != "pad"]
    # the study's cells: 8 models x (14 zeroshot + 13 probe + 5 verification + 2 IJB + 2 MAD + CelebA)
    counts = {p: sum(1 for c in cases if c[0] == p) for p in ("zeroshot", "linear_probe",
                                                               "verification", "ijb", "mad", "pad")}
    assert counts == {"zeroshot": 112, "linear_probe": 104, "verification": 40, "ijb": 16,
                      "mad": 16, "pad": 8 + 8}
    # head-scored datasets list only models with a head
    for d in paper.datasets.values():
        if d.type in ("mad", "pad") and d.option("scoring") == "head":
            assert all(paper.models[m].head for m in paper.models_for(d.id)), d.id
    demo = load_suite(root / "demo.toml", {"HARNESS_DEMO": "/demo"})
    for d in demo.datasets.values():
        if d.type in ("mad", "pad") and d.option("scoring") == "head":
            assert paper.models_for is not None and demo.models_for(d.id) == ["tiny-mad", "tiny-pad"]


def test_defaults_for_variables_yield_to_the_environment(monkeypatch):
    text = GOOD.replace('root = "data/digits"', 'root = "${TB_DEMO}/digits"')
    monkeypatch.delenv("TB_DEMO", raising=False)
    s = parse_suite(text, "/suites/s.toml", Path("/suites"), defaults={"TB_DEMO": "/cache/demo"})
    assert s.datasets["digits"].root == "/cache/demo/digits" and s.datasets["digits"].missing_env == ()
    monkeypatch.setenv("TB_DEMO", "/elsewhere")
    s = parse_suite(text, "/suites/s.toml", Path("/suites"), defaults={"TB_DEMO": "/cache/demo"})
    assert s.datasets["digits"].root == "/elsewhere/digits"


CHOOSE = GOOD + """
[datasets.spoof]
type = "pad"
format = "list"
root = "/data/pad.csv"
protocols = ["pad"]
scoring = "probe"
"""


def test_dataset_chooses_its_models():
    s = parse(CHOOSE.replace('scoring = "probe"', 'scoring = "probe"\nmodels = ["ft"]'))
    assert s.models_for("spoof") == ["ft"] and s.models_for("digits") == ["base", "ft"]
    assert ("pad", "base", "spoof") not in s.cases() and ("pad", "ft", "spoof") in s.cases()
    s = parse(CHOOSE.replace('scoring = "probe"', 'scoring = "probe"\nexclude_models = ["ft"]'))
    assert s.models_for("spoof") == ["base"]
    # both: the list, minus the exclusions; suite order whatever the list's order
    s = parse(CHOOSE.replace('scoring = "probe"',
                             'scoring = "probe"\nmodels = ["ft", "base"]\nexclude_models = []'))
    assert s.models_for("spoof") == ["base", "ft"]
    assert len(s.cases()) == 6 + 2


@pytest.mark.parametrize("extra, expected", [
    ('models = ["ftt"]', "[datasets.spoof] models: 'ftt' names no model (did you mean 'ft'?)"),
    ('exclude_models = ["bas"]', "[datasets.spoof] exclude_models: 'bas' names no model (did you mean 'base'?)"),
    ('models = "ft"', "[datasets.spoof] models: expected a list of model ids"),
    ('models = ["ft"]\nexclude_models = ["ft"]', "[datasets.spoof] models: chooses no model"),
])
def test_model_choice_mistakes(extra, expected):
    with pytest.raises(SuiteError) as ei:
        parse(CHOOSE.replace('scoring = "probe"', 'scoring = "probe"\n' + extra))
    assert expected in str(ei.value) and "\n" not in str(ei.value)


def test_head_scored_dataset_lists_models_without_head():
    text = CHOOSE.replace('scoring = "probe"', 'scoring = "head"\nmodels = ["base"]')
    with pytest.raises(SuiteError, match=r"\[datasets.spoof\] models: scoring = 'head' but 'base' has no head"):
        parse(text)
    assert parse(text.replace('models = ["base"]', '')).models_for("spoof") == ["base", "ft"]


PRESETS = """
[presets.fam]
arch = "ViT-B-16"
pretrained = "openai"
checkpoint_format = "clip-lora"
lora = { rank = 2, alpha = 4, scaling = "rslora" }
preprocess = { preset = "half", channel_order = "bgr", size = 224 }

[presets.cls]
type = "classification"
format = "imagefolder"
protocols = ["zeroshot"]

[models.a]
preset = "fam"
checkpoint = "/w/a.pt"

[models.b]
preset = "fam"
checkpoint = "/w/b.pt"
lora = { alpha = 8 }
preprocess = { size = 336 }
label = "B"

[datasets.d1]
preset = "cls"
root = "/data/d1"

[datasets.d2]
preset = "cls"
root = "/data/d2"
protocols = ["zeroshot", "linear_probe"]
"""


def test_presets_merge_with_own_keys_winning():
    s = parse(PRESETS)
    a, b = s.models["a"], s.models["b"]
    assert a.lora.rank == b.lora.rank == 2 and a.lora.alpha == 4.0 and b.lora.alpha == 8.0
    assert b.lora.scaling == "rslora" and a.checkpoint == "/w/a.pt" and b.label == "B"
    assert a.preprocess.size == 224 and b.preprocess.size == 336
    assert b.preprocess.channel_order == "bgr" and b.preprocess.preset == "half"
    assert s.datasets["d1"].protocols == ("zeroshot",)
    assert s.datasets["d2"].protocols == ("zeroshot", "linear_probe")
    assert s.datasets["d1"].type == "classification" and s.datasets["d2"].format == "imagefolder"


@pytest.mark.parametrize("mutate, expected", [
    (lambda t: t.replace('preset = "fam"\ncheckpoint = "/w/a.pt"', 'preset = "famm"\ncheckpoint = "/w/a.pt"'),
     "[models.a] preset: 'famm' names no [presets.famm] table (did you mean 'fam'?)"),
    (lambda t: t.replace('[presets.cls]\n', '[presets.cls]\npreset = "fam"\n'),
     "[presets.cls] preset: a preset cannot name another preset"),
    (lambda t: t.replace('pretrained = "openai"\ncheckpoint_format', 'pretraind = "openai"\ncheckpoint_format'),
     "[models.a] pretraind: unknown key"),
    (lambda t: t.replace('size = 224 }', 'size = 0 }'),
     "[models.a.preprocess] size: expected an integer in 1..4096 (pixels), got 0"),
])
def test_preset_mistakes(mutate, expected):
    with pytest.raises(SuiteError) as ei:
        parse(mutate(PRESETS))
    assert expected in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("fmt, dtype, expected", [
    ("imagefoldr", "classification",
     "[datasets.digits] format: unknown format 'imagefoldr' (did you mean 'imagefolder'?); expected one of"),
    ("cifar10", "mad", "[datasets.digits] format: format 'cifar10' does not fit type = 'mad'"),
    ("list", "classification", "format 'list' does not fit type = 'classification'"),
])
def test_format_is_known_and_fits_the_type(fmt, dtype, expected):
    text = GOOD.replace('format = "imagefolder"', f'format = "{fmt}"')
    if dtype != "classification":
        text = text.replace('type = "classification"', f'type = "{dtype}"').replace(
            'protocols = ["zeroshot", "linear_probe"]\nprobe = "clip"', 'protocols = ["mad"]')
    with pytest.raises(SuiteError) as ei:
        parse(text)
    assert expected in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("size", ["0", "-5", "1e26", "4097", "100000000000000000"])
def test_preprocess_size_bounds(size):
    text = GOOD.replace('preprocess = { preset = "half", channel_order = "bgr" }',
                        f'preprocess = {{ preset = "half", size = {size} }}')
    with pytest.raises(SuiteError) as ei:
        parse(text)
    msg = str(ei.value)
    assert "[models.ft.preprocess] size: expected" in msg and "\n" not in msg
    assert "1..4096" in msg or "an integer" in msg


def test_preprocess_size_bounds_inclusive():
    for size in (1, 4096):
        text = GOOD.replace('channel_order = "bgr" }', f'channel_order = "bgr", size = {size} }}')
        assert parse(text).models["ft"].preprocess.size == size


def test_hostile_suite_files(tmp_path):
    from harness import suite as S

    bad = tmp_path / "latin1.toml"
    bad.write_bytes(GOOD.replace('name = "t"', 'name = "caf\xe9"').encode("latin-1"))
    with pytest.raises(SuiteError, match=r"latin1.toml: not UTF-8 text \(byte \d+, line 3\)"):
        load_suite(bad)
    deep = tmp_path / "deep.toml"
    deep.write_text(GOOD + "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SuiteError) as ei:
        load_suite(deep)
    assert "nested" in str(ei.value) and str(S.MAX_DEPTH) in str(ei.value)
    moderate = GOOD.replace('[suite]\nname = "t"', '[suite]\nname = "t"\n') + "\n"
    nested = moderate.replace('probe = "clip"', 'probe = "clip"\nx = ' + "[" * 40 + "]" * 40)
    with pytest.raises(SuiteError, match=f"nested deeper than {S.MAX_DEPTH} levels"):
        parse(nested)
    label = GOOD.replace('prompts = "mnist"', 'prompts = "mnist"\nlabel = "' + "x" * 201 + '"')
    with pytest.raises(SuiteError, match=r"\[datasets.digits\] label: expected at most 200 characters, got 201"):
        parse(label)
    assert parse(label.replace("x" * 201, "x" * 200)).datasets["digits"].label == "x" * 200
    big = tmp_path / "big.toml"
    big.write_text(GOOD.replace('prompts = "mnist"', 'prompts = "mnist"\nlabel = "' + "x" * (5 << 20) + '"'))
    with pytest.raises(SuiteError, match=f"larger than {S.MAX_SUITE_BYTES} bytes"):
        load_suite(big)
    huge = GOOD.replace('prompts = "mnist"', 'prompts = "mnist"\nlabel = "' + "x" * 100_000 + '"')
    with pytest.raises(SuiteError, match="100000"):
        parse(huge)
    with pytest.raises(SuiteError, match="is a folder"):
        load_suite(tmp_path)
