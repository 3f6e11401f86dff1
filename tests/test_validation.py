"""Validation of model files and dosing regimens: every error path, and its message.

Model cases start from a shipped model file (parsed with :mod:`tomllib`), change one
thing, and check that :meth:`ModelSpec.from_dict` raises :class:`ModelError` (also a
``ValueError``) whose message names the file, the offending key and, where there is one,
the offending value. Regimen cases do the same for :class:`RegimenError`.
"""

from __future__ import annotations

import copy
import re
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pkpd.errors import (
    CovariateDefaultWarning,
    CovariateError,
    CovariateRangeWarning,
    ModelError,
    PkpdError,
    RegimenError,
)
from pkpd.inputs.model import ModelSpec, available_models, load_model, models_dir
from pkpd.inputs.regimen import Bolus, Infusion, Regimen, load_regimen

FILE = "test-model.toml"


def _shipped(name: str) -> dict:
    with open(models_dir() / f"{name}.toml", "rb") as fh:
        return tomllib.load(fh)


DOMINO = _shipped("domino_racemic")
FANTA = _shipped("fanta2015_otto2021")
BASES = {"domino": DOMINO, "fanta": FANTA}


# ----------------------------------------------------------------------------- helpers


def _walk(d, path):
    for k in path[:-1]:
        d = d[k]
    return d


def set_(*path_and_value) -> Callable[[dict], None]:
    *path, value = path_and_value

    def f(d):
        _walk(d, path)[path[-1]] = copy.deepcopy(value)

    return f


def del_(*path) -> Callable[[dict], None]:
    def f(d):
        del _walk(d, path)[path[-1]]

    return f


def seq(*fns) -> Callable[[dict], None]:
    def f(d):
        for fn in fns:
            fn(d)

    return f


def _mutated(base: str, mutate) -> dict:
    d = copy.deepcopy(BASES[base])
    mutate(d)
    return d


SOURCE = {"source": "test", "tag": "assumed"}


def _add_sex(factor_level: str):
    """A categorical covariate `sex` and an effect of it on CL."""
    return seq(
        set_("covariates", "sex", {"levels": ["female", "male"], "default": "female", **SOURCE}),
        set_(
            "parameters",
            "CL",
            "covariates",
            [{"covariate": "sex", "type": "categorical", "factors": {factor_level: 1.2},
              **SOURCE}],
        ),
    )  # fmt: skip


def _cv(cv, conv=None):
    block = {"parameters": ["V1", "CL"], "cv_percent": cv, **SOURCE}
    if conv is not None:
        block["cv_convention"] = conv
    return set_("variability", 0, block)


def test_shipped_models_load():
    """The unmodified dicts are valid (so each case below fails for its one change)."""
    # The library grows (issue 4): the two fixtures' originals must be shipped and every
    # shipped model must load, whatever else the library holds.
    names = available_models()
    assert {"domino_racemic", "fanta2015_otto2021"} <= set(names)
    for name in names:
        assert load_model(name).name == name
    for base in BASES.values():
        spec = ModelSpec.from_dict(copy.deepcopy(base), file=FILE)
        assert spec.file == Path(FILE)


def test_categorical_covariate_fixture_is_valid():
    spec = ModelSpec.from_dict(_mutated("fanta", _add_sex("male")), file=FILE)
    th_f = spec.individual_parameters({"weight": 70, "sex": "female"})
    th_m = spec.individual_parameters({"weight": 70, "sex": "male"})
    i = spec.param_names.index("CL")
    assert th_m[i] == pytest.approx(1.2 * th_f[i], rel=1e-15)


def test_cv_percent_fixture_is_valid():
    spec = ModelSpec.from_dict(_mutated("fanta", _cv([30, 20], "sqrt_omega2")), file=FILE)
    np.testing.assert_allclose(np.diag(spec.variability[0].omega), [0.09, 0.04], rtol=1e-15)


# ----------------------------------------------------------------------------- model errors

# id -> (base model, mutation, fragments the message must contain, in any order).
# Every message must also contain FILE. Fragments are literal text.
MODEL_CASES = [
    # unknown keys
    ("unknown-top-level-key", "domino", set_("bogus", 1), ["`bogus`", "unknown key"]),
    ("unknown-model-key", "fanta", set_("model", "author", "x"),
     ["`model.author`", "unknown key"]),
    ("unknown-parameter-key", "domino", set_("parameters", "V1", "valu", 1),
     ["`parameters.V1.valu`", "unknown key", "value"]),
    ("unknown-compartment-key", "domino", set_("compartments", "central", "dose", True),
     ["`compartments.central.dose`", "unknown key"]),
    ("unknown-flow-key", "domino", set_("flows", 0, "too", "peripheral1"),
     ["`flows[0].too`", "unknown key"]),
    ("unknown-variability-key", "fanta", set_("variability", 0, "omgea", 1),
     ["`variability[0].omgea`", "unknown key"]),
    # provenance
    ("missing-source", "domino", del_("parameters", "V1", "source"),
     ["`parameters.V1.source`", "missing"]),
    ("missing-tag", "domino", del_("parameters", "V1", "tag"), ["`parameters.V1.tag`", "missing"]),
    ("missing-source-and-tag", "domino",
     seq(del_("parameters", "V1", "source"), del_("parameters", "V1", "tag")),
     ["`parameters.V1.source`", "must cite its source"]),
    ("bad-tag", "domino", set_("parameters", "k10", "tag", "verified"),
     ["`parameters.k10.tag`", "'verified'", "code-unconfirmed"]),
    ("empty-tag", "fanta", set_("parameters", "Q2", "tag", ""), ["`parameters.Q2.tag`", "''"]),
    ("source-not-string", "fanta", set_("parameters", "Q2", "source", 5),
     ["`parameters.Q2.source`", "got 5"]),
    ("variability-missing-source", "fanta", del_("variability", 0, "source"),
     ["`variability[0].source`", "missing"]),
    ("covariate-range-missing-source", "fanta",
     seq(del_("covariates", "weight", "source"), del_("covariates", "weight", "tag")),
     ["`covariates.weight.source`", "missing"]),
    # references between parameters and structure
    ("parameter-of-flow-missing", "domino", del_("parameters", "k12"),
     ["`flows[1] (central -> peripheral1)`", "'k12'", "not defined under `parameters`"]),
    ("parameter-of-volume-missing", "domino", del_("parameters", "V1"),
     ["`compartments.central.volume`", "'V1'", "not defined"]),
    ("parameter-of-ke0-missing", "domino", set_("compartments", "effect", "ke0", "ke9"),
     ["`compartments.effect.ke0`", "'ke9'", "not defined"]),
    ("unused-parameter", "domino",
     set_("parameters", "k99", {"value": "1 1/h", **SOURCE}),
     ["`parameters.k99`", "not used"]),
    # values
    ("volume-negative", "fanta", set_("parameters", "V2", "value", "-5 L"),
     ["`parameters.V2`", "'-5 L'", "> 0"]),
    ("volume-zero", "fanta", set_("parameters", "V2", "value", "0 L"),
     ["`parameters.V2`", "'0 L'", "> 0"]),
    ("volume-negative-per-kg", "domino", set_("parameters", "V1", "value", "-0.063 L/kg"),
     ["`parameters.V1`", "'-0.063 L/kg'", "> 0"]),
    ("clearance-negative", "fanta", set_("parameters", "Q2", "value", "-23.2 L/h"),
     ["`parameters.Q2`", "'-23.2 L/h'", ">= 0"]),
    ("clearance-given-as-volume", "fanta", set_("parameters", "Q2", "value", "23.2 L"),
     ["`flows[1] (central -> peripheral1)`", "'Q2'", "'23.2 L'", "a volume",
      "expected a clearance"]),
    ("rate-constant-given-as-volume", "domino", set_("parameters", "k10", "value", "5 L"),
     ["`flows[0] (central -> out)`", "'k10'", "'5 L'", "expected a rate_constant"]),
    ("volume-given-as-clearance", "fanta", set_("parameters", "V2", "value", "187 L/h"),
     ["`compartments.peripheral1.volume`", "'V2'", "'187 L/h'", "expected a volume"]),
    ("unknown-unit", "fanta", set_("parameters", "Q2", "value", "23.2 blorbs"),
     ["`parameters.Q2.value`", "'23.2 blorbs'"]),
    ("unparsable-value", "fanta", set_("parameters", "Q2", "value", "lots"),
     ["`parameters.Q2.value`", "'lots'"]),
    ("value-bool", "fanta", set_("parameters", "Q2", "value", True),
     ["`parameters.Q2.value`", "True"]),
    ("value-overflow", "fanta", set_("parameters", "Q2", "value", "1e999 L/h"),
     ["`parameters.Q2.value`", "'1e999 L/h'"]),
    ("bad-kind", "fanta", set_("parameters", "Q2", "kind", "speed"),
     ["`parameters.Q2.kind`", "'speed'"]),
    pytest.param(
        "kind-with-wrong-dimension", "fanta",
        seq(set_("parameters", "Q2", "kind", "clearance"),
            set_("parameters", "Q2", "value", "23.2 L")),
        ["`parameters.Q2.value`", "'23.2 L'", "clearance"]),
    pytest.param(
        "kind-with-unknown-unit", "fanta",
        seq(set_("parameters", "Q2", "kind", "clearance"),
            set_("parameters", "Q2", "value", "23.2 blorbs")),
        ["`parameters.Q2.value`", "'blorbs'"]),
    pytest.param(
        "molar-mass-unknown-unit", "fanta",
        set_("analytes", "s_ketamine", "molar_mass", "237 blorbs"),
        ["`analytes.s_ketamine.molar_mass`", "'237 blorbs'"]),
    pytest.param(
        "residual-additive-wrong-dimension", "fanta",
        set_("residual", "cp", {"type": "additive", "sd": "5 L", **SOURCE}),
        ["`residual.cp.sd`", "'5 L'"]),
    ("weight-exponent-on-per-kg", "domino", set_("parameters", "V1", "weight_exponent", 1.0),
     ["`parameters.V1.weight_exponent`", "'0.063 L/kg'", "already per kg"]),
    # structure
    ("metabolite-formed-by-no-flow", "fanta",
     seq(del_("flows", 0, "to"), del_("flows", 0, "fraction")),
     ["`analytes.norketamine`", "formed by no flow"]),
    ("flow-to-unknown-compartment", "domino", set_("flows", 1, "to", "peripheral9"),
     ["`flows[1].to`", "'peripheral9'", "not a compartment"]),
    ("flow-from-unknown-compartment", "domino", set_("flows", 1, "from", "nowhere"),
     ["`flows[1].from`", "'nowhere'", "not a compartment"]),
    ("between-unknown-compartment", "fanta", set_("flows", 1, "between", ["central", "nowhere"]),
     ["`flows[1].between", "'nowhere'", "not a compartment"]),
    ("flow-into-effect-site", "domino", set_("flows", 1, "to", "effect"),
     ["`flows[1].to`", "'effect'", "effect site"]),
    ("effect-link-missing-compartment", "domino", set_("compartments", "effect", "link", "plasma"),
     ["`compartments.effect.link`", "'plasma'", "does not name a mass compartment"]),
    ("effect-link-to-effect-site", "domino",
     set_("compartments", "effect2", {"type": "effect", "link": "effect", "ke0": "ke0"}),
     ["`compartments.effect2.link`", "'effect'"]),
    ("effect-without-ke0", "domino", del_("compartments", "effect", "ke0"),
     ["`compartments.effect.ke0`", "missing"]),
    ("two-dosing-compartments", "domino", set_("compartments", "peripheral1", "dosing", True),
     ["`compartments.peripheral1.dosing`", "only one dosing compartment", "'central'"]),
    ("no-dosing-compartment", "domino", del_("compartments", "central", "dosing"),
     ["`compartments`", "no compartment has `dosing = true`"]),
    ("dosing-into-metabolite", "fanta",
     seq(del_("compartments", "central", "dosing"),
         set_("compartments", "nk_central", "dosing", True)),
     ["`compartments.nk_central.dosing`", "parent"]),
    ("compartment-unknown-analyte", "domino",
     set_("compartments", "peripheral1", "analyte", "propofol"),
     ["`compartments.peripheral1.analyte`", "'propofol'"]),
    # variability
    ("omega-not-symmetric", "fanta",
     set_("variability", 0, "omega", [[0.084177, 0.02261], [0.02262, 0.026048]]),
     ["`variability[0].omega`", "not symmetric"]),
    ("omega-not-positive-definite", "fanta",
     set_("variability", 0, "omega", [[0.01, 0.1], [0.1, 0.01]]),
     ["`variability[0].omega`", "not positive definite"]),
    ("omega-negative-variance", "fanta",
     set_("variability", 0, "omega", [[-0.01, 0.0], [0.0, 0.01]]),
     ["`variability[0].omega`", "not positive definite"]),
    ("omega-wrong-shape-2x3", "fanta",
     set_("variability", 0, "omega", [[0.01, 0, 0], [0, 0.01, 0]]),
     ["`variability[0].omega`", "2x2", "[[0.01, 0, 0], [0, 0.01, 0]]"]),
    ("omega-wrong-shape-3x3", "fanta",
     set_("variability", 0, "omega", [[0.01, 0, 0], [0, 0.01, 0], [0, 0, 0.01]]),
     ["`variability[0].omega`", "2x2"]),
    ("omega-scalar-for-two-parameters", "fanta", set_("variability", 0, "omega", 0.1),
     ["`variability[0].omega`", "2x2", "0.1"]),
    ("omega-ragged", "fanta", set_("variability", 0, "omega", [[0.01, 0.0], [0.01]]),
     ["`variability[0].omega`", "2x2"]),
    ("omega-string", "fanta", set_("variability", 0, "omega", "abc"),
     ["`variability[0].omega`", "'abc'"]),
    ("omega-nan", "fanta", set_("variability", 0, "omega", [[float("nan"), 0], [0, 0.1]]),
     ["`variability[0].omega`", "finite"]),
    pytest.param(
        "omega-wrong-shape-flat-list", "fanta",
        set_("variability", 0, "omega", [0.084177, 0.02261, 0.02261, 0.026048]),
        ["`variability[0].omega`", "2x2"]),
    pytest.param(
        "omega-wrong-shape-1x4", "fanta",
        set_("variability", 0, "omega", [[0.084177, 0.02261, 0.02261, 0.026048]]),
        ["`variability[0].omega`", "2x2"]),
    ("variability-unknown-parameter", "fanta",
     set_("variability", 0, "parameters", ["V1", "CLX"]),
     ["`variability[0].parameters`", "'CLX'"]),
    ("variability-parameter-twice", "fanta",
     set_("variability", 1, "parameters", ["V1", "CLN"]),
     ["`variability[1].parameters`", "'V1'", "two blocks"]),
    ("omega-and-cv", "fanta", set_("variability", 0, "cv_percent", [30, 20]),
     ["`variability[0]`", "exactly one of"]),
    ("cv-without-convention", "fanta", _cv([30, 20]),
     ["`variability[0].cv_convention`", "lognormal", "sqrt_omega2"]),
    ("cv-bad-convention", "fanta", _cv([30, 20], "normal"),
     ["`variability[0].cv_convention`", "'normal'"]),
    ("cv-wrong-count", "fanta", _cv([30], "lognormal"),
     ["`variability[0].cv_percent`", "2 positive", "[30]"]),
    ("cv-negative", "fanta", _cv([30, -20], "lognormal"),
     ["`variability[0].cv_percent`", "[30, -20]"]),
    # residual error
    ("residual-unknown-output", "fanta",
     set_("residual", "ce", {"type": "proportional", "sd": 0.1, **SOURCE}),
     ["`residual.ce`", "no output named 'ce'", "cp_norketamine"]),
    ("residual-bad-type", "fanta", set_("residual", "cp", "type", "poisson"),
     ["`residual.cp.type`", "'poisson'"]),
    ("residual-negative-sd", "fanta", set_("residual", "cp", "sd", -0.1),
     ["`residual.cp`", ">= 0"]),
    # covariates
    ("covariate-range-three-numbers", "fanta", set_("covariates", "weight", "range", [45, 97, 100]),
     ["`covariates.weight.range`", "[45, 97, 100]"]),
    ("covariate-range-reversed", "fanta", set_("covariates", "weight", "range", [97, 45]),
     ["`covariates.weight.range`", "low <= high", "[97, 45]"]),
    ("covariate-range-string", "fanta", set_("covariates", "weight", "range", "45-97"),
     ["`covariates.weight.range`", "'45-97'"]),
    ("covariate-range-bool", "fanta", set_("covariates", "weight", "range", [True, 97]),
     ["`covariates.weight.range`", "[True, 97]"]),
    pytest.param(
        "covariate-range-nan", "fanta", set_("covariates", "weight", "range", [float("nan"), 97]),
        ["`covariates.weight.range`", "nan"]),
    ("covariate-reference-not-number", "fanta", set_("covariates", "weight", "reference", "70 kg"),
     ["`covariates.weight.reference`", "'70 kg'"]),
    ("categorical-factor-unknown-level", "fanta", _add_sex("other"),
     ["`parameters.CL.covariates[0].factors.other`", "not a level of 'sex'", "female, male"]),
    ("categorical-default-unknown-level", "fanta",
     seq(_add_sex("male"), set_("covariates", "sex", "default", "x")),
     ["`covariates.sex.default`", "'x'"]),
    ("covariate-effect-undeclared", "fanta",
     set_("parameters", "CL", "covariates",
          [{"covariate": "age2", "type": "linear", "reference": 40, "coefficient": 0.1,
            **SOURCE}]),
     ["`parameters.CL.covariates[0].covariate`", "'age2'"]),
    # metadata
    ("schema-version-2", "fanta", set_("schema_version", 2),
     ["`schema_version`", "2 unsupported", "expected 1"]),
    ("schema-version-string", "fanta", set_("schema_version", "1"),
     ["`schema_version`", "'1' unsupported"]),
    ("schema-version-missing", "fanta", del_("schema_version"), ["`schema_version`", "missing"]),
    pytest.param(
        "schema-version-bool", "fanta", set_("schema_version", True),
        ["`schema_version`", "True"]),
    ("sampling-site-invalid", "fanta", set_("model", "sampling_site", "capillary"),
     ["`model.sampling_site`", "'capillary'", "venous"]),
    ("sampling-site-missing", "fanta", del_("model", "sampling_site"),
     ["`model.sampling_site`", "missing"]),
    ("notes-not-strings", "fanta", set_("model", "notes", [1, 2]), ["`model.notes`"]),
    ("no-parent-analyte", "fanta", set_("analytes", "s_ketamine", "role", "metabolite"),
     ["`analytes`", "exactly one analyte", "found 0"]),
    ("bad-role", "fanta", set_("analytes", "s_ketamine", "role", "prodrug"),
     ["`analytes.s_ketamine.role`", "'prodrug'"]),
    ("molar-mass-negative", "fanta", set_("analytes", "s_ketamine", "molar_mass", "-237 g/mol"),
     ["`analytes.s_ketamine.molar_mass`", "'-237 g/mol'", "> 0"]),
]  # fmt: skip


def _case_id(c):
    return c.values[0] if hasattr(c, "values") else c[0]


@pytest.mark.parametrize(
    ("case", "base", "mutate", "fragments"), MODEL_CASES, ids=[_case_id(c) for c in MODEL_CASES]
)
def test_model_error(case, base, mutate, fragments):
    data = _mutated(base, mutate)
    first_key = next(f for f in fragments if f.startswith("`"))
    with pytest.raises(ModelError, match=re.escape(first_key)) as ei:
        ModelSpec.from_dict(data, file=FILE)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert isinstance(ei.value, PkpdError)
    assert FILE in msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"


def test_model_unknown_unit_message_names_the_unit():
    data = _mutated("fanta", set_("parameters", "Q2", "value", "23.2 blorbs"))
    with pytest.raises(ModelError, match=r"unknown unit 'blorbs'"):
        ModelSpec.from_dict(data, file=FILE)


def test_model_nonpositive_volume_message_says_typical_value():
    data = _mutated("fanta", set_("parameters", "V2", "value", "0 L"))
    with pytest.raises(ModelError, match=r"typical values must be > 0"):
        ModelSpec.from_dict(data, file=FILE)


def test_model_error_without_file_uses_placeholder():
    data = _mutated("domino", set_("bogus", 1))
    with pytest.raises(ModelError, match=r"^<model>: `bogus`: unknown key"):
        ModelSpec.from_dict(data)


# ----------------------------------------------------------------------------- load_model


def test_load_model_unknown_name_lists_models():
    with pytest.raises(ModelError, match=r"unknown model 'no_such_model'") as ei:
        load_model("no_such_model")
    for name in available_models():
        assert name in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_load_model_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ModelError, match=re.escape(f"{path}: model file not found")):
        load_model(path)


def test_load_model_toml_syntax_error_names_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('schema_version = 1\n[model\nname = "x"\n', encoding="utf-8")
    with pytest.raises(ModelError, match=re.escape(f"{path}: not valid TOML")) as ei:
        load_model(path)
    assert "line 2" in str(ei.value)
    assert isinstance(ei.value, ValueError)
    # also by string path
    with pytest.raises(ModelError, match=re.escape(str(path))):
        load_model(str(path))


def test_load_model_validation_error_names_file(tmp_path):
    text = (models_dir() / "fanta2015_otto2021.toml").read_text(encoding="utf-8")
    assert 'sampling_site = "venous"' in text
    path = tmp_path / "edited.toml"
    path.write_text(text.replace('sampling_site = "venous"', 'sampling_site = "capillary"'),
                    encoding="utf-8")  # fmt: skip
    with pytest.raises(ModelError, match=re.escape(f"{path}: `model.sampling_site`: 'capillary'")):
        load_model(path)


def test_load_model_valid_copy(tmp_path):
    path = tmp_path / "copy.toml"
    path.write_bytes((models_dir() / "domino_racemic.toml").read_bytes())
    spec = load_model(path)
    assert spec.file == path
    assert spec.name == "domino_racemic"


def test_load_model_directory_is_model_error(tmp_path):
    with pytest.raises(ModelError, match=re.escape(str(tmp_path))):
        load_model(tmp_path)


# ----------------------------------------------------------------------------- covariate range


@pytest.fixture(scope="module")
def fanta():
    return load_model("fanta2015_otto2021")


@pytest.mark.parametrize("weight", [30.0, 44.9, 97.1, 150.0])
def test_weight_outside_range_warns(fanta, weight):
    with pytest.warns(CovariateRangeWarning, match=r"`weight` = .* outside the studied range"):
        fanta.individual_parameters({"weight": weight})


def test_weight_outside_range_warns_for_arrays(fanta):
    with pytest.warns(CovariateRangeWarning, match=r"\[45, 97\] kg"):
        theta = fanta.individual_parameters({"weight": np.array([60.0, 70.0, 120.0])})
    assert theta.shape == (3, len(fanta.param_names))


def test_age_outside_range_warns(fanta):
    with pytest.warns(CovariateRangeWarning, match=r"`age` = 60"):
        fanta.individual_parameters({"weight": 70, "age": 60})


@pytest.mark.parametrize("weight", [45.0, 60.0, 70.0, 97.0])
def test_weight_inside_range_does_not_warn(fanta, weight):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fanta.individual_parameters({"weight": weight})
        fanta.individual_parameters({"weight": weight, "age": 30})


def test_warn_false_silences_range_warning(fanta):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fanta.individual_parameters({"weight": 150.0}, warn=False)


def test_simulate_outside_range_warns():
    from pkpd.running.simulate import simulate

    with pytest.warns(CovariateRangeWarning, match=r"`weight` = 120"):
        simulate("fanta2015_otto2021", "20 mg over 30 min from 0 h",
                 covariates={"weight": 120}, until="1 h")  # fmt: skip


def test_simulate_inside_range_does_not_warn():
    from pkpd.running.simulate import simulate

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        simulate("fanta2015_otto2021", "20 mg over 30 min from 0 h",
                 covariates={"weight": 70}, until="1 h")  # fmt: skip


def test_range_warning_for_patients_counts_them(fanta):
    """One message for an array of patients: how many are outside and their extremes."""
    w = np.array([60.0, 30.0, 70.0, 120.0, 150.0])
    with pytest.warns(CovariateRangeWarning) as rec:
        fanta.individual_parameters({"weight": w})
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "3 of 5 patients have covariate `weight` (30 to 150 kg) outside" in msg, msg
    assert "[45, 97] kg" in msg
    assert "60" not in msg and "array" not in msg  # not every patient's value


# ----------------------------------------------------------------------------- covariate names,
# defaults and impossible values (issue 12: nothing silent)


@pytest.mark.parametrize(
    ("cov", "pattern"),
    [
        ({"wt": 70}, r"unknown covariate 'wt' for model 'fanta2015_otto2021'; expected one of "
                     r"weight, age, sex, height, bmi"),
        ({"Weight": 70}, r"unknown covariate 'Weight' .*did you mean `weight`\? \(names are "
                         r"case-sensitive"),
        ({"weight": 70, "race": "asian"}, r"unknown covariate 'race'"),
    ],
)  # fmt: skip
def test_unknown_covariate_names_are_errors(fanta, cov, pattern):
    with pytest.raises(CovariateError, match=pattern):
        fanta.individual_parameters(cov)
    from pkpd.running.simulate import simulate

    with pytest.raises(CovariateError, match=pattern):
        simulate(fanta, "20 mg bolus at 0 h", covariates=cov, until="1 h")


def test_race_in_the_wrong_case_is_an_error_that_suggests_race():
    m = load_model("perezruixo2021_esketamine")
    with pytest.raises(CovariateError, match=r"'Race'.*did you mean `race`\?"):
        m.individual_parameters({"Race": "asian"})
    with pytest.raises(CovariateError, match=r"`race` = 'Asian'; expected one of non_asian, asian"):
        m.individual_parameters({"race": "Asian"})


def test_a_covariate_the_model_uses_defaults_loudly(fanta):
    from pkpd.running.simulate import simulate

    with pytest.warns(CovariateDefaultWarning, match=r"`weight` not given: using the model "
                                                     r"default 70 kg") as rec:  # fmt: skip
        ds = simulate(fanta, "20 mg bolus at 0 h", until="1 h")
    assert rec[0].filename == __file__
    assert "weight=70" in ds.attrs["covariates"]
    m = load_model("perezruixo2021_esketamine")
    with pytest.warns(CovariateDefaultWarning, match=r"`race` not given: .*default 'non_asian'"):
        m.individual_parameters({"age": 40})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.individual_parameters({"race": "non_asian", "age": 40})  # weight, unused: silent
        m.typical_theta()  # reference values on purpose


def test_a_per_kg_dose_without_weight_says_which_weight():
    from pkpd.running.simulate import simulate

    with pytest.warns(CovariateDefaultWarning, match=r"default 70 kg .*and its per-kg doses"):
        ds = simulate("domino_racemic", "1 mg/kg bolus at 0 h", until="1 h")
    assert float(ds.dose_given[-1]) == pytest.approx(70.0)
    # a model without a default weight still refuses (as before)
    with pytest.raises(RegimenError, match="per-kg doses: pass the weight"):
        simulate("perezruixo2021_esketamine", "1 mg/kg bolus at 0 h", {"race": "asian"})


@pytest.mark.parametrize("name", ["herd2007_racemic_children", "flint2017_s_ketamine_children"])
def test_children_models_refuse_a_default_adult_weight(name):
    from pkpd.running.simulate import simulate

    m = load_model(name)
    assert m.paediatric
    pattern = r"`weight` was not given: .* estimated in children \(weight .* its default 70 kg"
    with pytest.raises(CovariateError, match=pattern):
        simulate(name, "1 mg/kg bolus at 0 h", {"age": 5}, until="1 h")
    with pytest.raises(CovariateError, match=pattern):
        simulate(name, "20 mg bolus at 0 h", until="1 h")
    with pytest.raises(CovariateError, match=pattern):
        m.individual_parameters({"age": 5})
    assert m.typical_theta().shape == (len(m.param_names),)  # the 70-kg standard, on purpose
    assert not load_model("hijazi2003_racemic").paediatric  # adults (age range 18-100 y)


@pytest.mark.parametrize(
    ("cov", "pattern"),
    [
        ({"weight": 70, "age": -1}, r"`age` = -1: impossible value -1 year: age must lie in "
                                    r"\[0, 130\] year \(physiological plausibility limits"),
        ({"weight": 70, "age": 1000}, r"`age` = 1000: impossible value 1000 year"),
        ({"weight": 7e-5}, r"`weight` = 7e-05: impossible value 7e-05 kg: weight must lie in "
                           r"\[0.2, 700\] kg"),
        ({"weight": 800}, r"`weight` = 800: impossible"),
        ({"weight": 70, "height": 300}, r"`height` = 300: impossible value 300 cm"),
        ({"weight": 70, "bmi": 2}, r"`bmi` = 2: impossible"),
        ({"weight": np.array([70.0, -3.0, 80.0, 0.0])},
         r"`weight`: impossible value -3 kg \(2 of 4 values\)"),
        ({"weight": 70, "sex": "F"}, r"`sex` = 'F'; expected 'female' or 'male'"),
        ({"weight": "heavy"}, r"`weight` = 'heavy': expected a number \(kg\)"),
    ],
)  # fmt: skip
def test_impossible_covariates_are_errors_not_range_warnings(cov, pattern):
    """Issue 12: age -1 or 1000 only warned; an age the model does not declare was not
    checked at all (domino has no age covariate)."""
    for name in ("fanta2015_otto2021", "domino_racemic"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", CovariateRangeWarning)
            with pytest.raises(CovariateError, match=pattern):
                load_model(name).individual_parameters(cov)


def test_range_warning_points_at_caller(fanta):
    with pytest.warns(CovariateRangeWarning) as rec:
        fanta.individual_parameters({"weight": 150.0})
    assert rec[0].filename == __file__


# ----------------------------------------------------------------------------- regimen errors

# (one-line regimen, fragments the message must contain)
PARSE_ERRORS = [
    ("-5 mg bolus at 0 h", ["'-5 mg bolus at 0 h'", "'-5 mg'", "negative"]),
    ("-0.3 mg/kg bolus at 0 h", ["'-0.3 mg/kg'", "negative"]),
    ("-5 mg/h from 0 h to 1 h", ["'-5 mg/h from 0 h to 1 h'", "rate '-5 mg/h' is negative"]),
    ("-5 mg over 1 h from 0 h", ["total dose '-5 mg' is negative"]),
    ("5 mg bolus at 0 h over -5 min", ["'5 mg bolus at 0 h over -5 min'", "negative"]),
    ("5 mg/h from 2 h to 1 h", ["'5 mg/h from 2 h to 1 h'", "stops at 1 h", "start at 2 h"]),
    ("5 mg/h from 1 h to 60 min", ["'5 mg/h from 1 h to 60 min'", "stops at 1 h",
                                   "start at 1 h"]),
    ("5 mg/h from 1 h for 0 h", ["'5 mg/h from 1 h for 0 h'", "not after its start"]),
    ("5 mg over 0 min from 1 h", ["'5 mg over 0 min from 1 h'", "not after its start"]),
    ("5 blorbs bolus at 0 h", ["'5 blorbs bolus at 0 h'", "unknown unit 'blorbs'"]),
    ("5 blorbs/h from 0 h to 1 h", ["unknown unit 'blorbs/h'"]),
    ("5 mg bolus at 0 blorbs", ["'5 mg bolus at 0 blorbs'", "unknown unit 'blorbs'"]),
    ("5 mg/h from 0 h to 1 blorbs", ["unknown unit 'blorbs'"]),
    ("5 mg bolus at 1 mg", ["'1 mg' has dimension", "expected a time"]),
    ("20 mg/h bolus at 0 h", ["'20 mg/h' has dimension", "expected a drug amount"]),
    ("5 mg bolus at 1e999 h", ["'1e999 h' is not a finite number"]),
    ("give 5 mg now", ["cannot parse 'give 5 mg now'", "bolus at"]),
    ("5 mg bolus at 0 h; lots of drug", ["cannot parse 'lots of drug'"]),
    ("5 mg/h", ["cannot parse '5 mg/h'"]),
    ("5 mg at 0 h", ["cannot parse '5 mg at 0 h'"]),
    ("20 mg from 0 h to 1 h", ["'20 mg' is an amount, not a rate",
                               "'20 mg over <duration> from <time>'"]),
    ("0.3 mg/kg from 0 h for 4 h", ["'0.3 mg/kg' is an amount, not a rate",
                                    "'0.3 mg/kg over <duration> from <time>'"]),
    ("", ["empty regimen"]),
    ("  ;  ", ["a regimen needs at least one dose"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "fragments"), PARSE_ERRORS, ids=[c[0] for c in PARSE_ERRORS])
def test_regimen_parse_error(text, fragments):
    with pytest.raises(RegimenError, match=re.escape(fragments[0])) as ei:
        Regimen.parse(text)
    assert isinstance(ei.value, ValueError)
    assert isinstance(ei.value, PkpdError)
    for frag in fragments:
        assert frag in str(ei.value)


def test_load_regimen_one_line_error():
    with pytest.raises(RegimenError, match=r"in '-5 mg bolus at 0 h'"):
        load_regimen("-5 mg bolus at 0 h")


@pytest.mark.parametrize("weight", [None, 0, -70, float("nan"), float("inf")])
def test_event_table_per_kg_needs_weight(weight):
    reg = Regimen.parse("0.3 mg/kg bolus at 0 h; 10 mg/h from 0 h to 1 h")
    with pytest.raises(RegimenError, match=r"per-kg doses: a positive body weight") as ei:
        reg.event_table(weight)
    assert repr(weight) in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_event_table_per_kg_rate_needs_weight():
    with pytest.raises(RegimenError, match=r"per-kg doses.*got None"):
        Regimen.parse("5 ug/kg/min from 0 h to 1 h").event_table()


def test_event_table_absolute_needs_no_weight():
    ev = Regimen.parse("5 mg bolus at 0 h").event_table()
    assert ev.bolus.tolist() == [5.0]


RF = "regimen.toml"
BOLUS = {"amount": "5 mg", "at": "0 h"}
INF = {"rate": "5 mg/h", "start": "0 h", "stop": "1 h"}

# (document, fragments)
DICT_ERRORS = [
    ({"boluses": [BOLUS]}, ["`boluses`", "unknown key"]),
    ({"regimen": {"title": "x"}, "bolus": [BOLUS]}, ["`regimen.title`", "unknown key"]),
    ({"regimen": "x", "bolus": [BOLUS]}, ["`regimen`", "expected a table"]),
    ({"bolus": [{**BOLUS, "when": "now"}]}, ["`bolus[0].when`", "unknown key"]),
    ({"infusion": [{**INF, "speed": 1}]}, ["`infusion[0].speed`", "unknown key"]),
    ({"infusion": [{**INF, "total": "5 mg"}]}, ["`infusion[0]`", "exactly one of `rate` and"]),
    ({"infusion": [{"start": "0 h", "stop": "1 h"}]}, ["`infusion[0]`", "exactly one of `rate`"]),
    ({"infusion": [{"rate": "5 mg/h", "start": "0 h"}]},
     ["`infusion[0]`", "exactly one of `stop` and `duration`"]),
    ({"infusion": [{**INF, "duration": "1 h"}]}, ["`infusion[0]`", "exactly one of `stop`"]),
    ({"infusion": [{"rate": "5 mg/h", "stop": "1 h"}]}, ["`infusion[0].start`", "missing"]),
    ({"bolus": [{"amount": "5 mg"}]}, ["`bolus[0].at`", "missing"]),
    ({"bolus": [{"at": "0 h"}]}, ["`bolus[0].amount`", "missing"]),
    ({"bolus": [{**BOLUS, "amount": "-5 mg"}]}, ["bolus[0]", "'-5 mg' is negative"]),
    ({"infusion": [{**INF, "rate": "-5 mg/h"}]}, ["infusion[0]", "'-5 mg/h' is negative"]),
    ({"infusion": [{**INF, "start": "2 h"}]}, ["infusion[0]", "stops at 1 h", "start at 2 h"]),
    ({"infusion": [{**INF, "stop": "0 h"}]}, ["infusion[0]", "stops at 0 h"]),
    ({"infusion": [{**INF, "rate": "5 blorbs"}]},
     ["`infusion[0].rate`", "unknown unit 'blorbs'"]),
    ({"infusion": [{**INF, "rate": "5 mg"}]},
     ["`infusion[0].rate`", "'5 mg' is an amount, not a rate", "`total`"]),
    ({"bolus": [{**BOLUS, "at": "noon"}]}, ["`bolus[0].at`", "'noon'"]),
    ({"bolus": [{**BOLUS, "at": 0}]}, ["`bolus[0].at`", "has no unit"]),
    ({"regimen": {"name": "x"}}, ["no [[bolus]], [[infusion]], [tci] or [pca] tables"]),
    ({"bolus": BOLUS}, ["`bolus`", "[[bolus]]"]),
    ({"bolus": ["5 mg"]}, ["`bolus[0]`", "expected a table"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "fragments"), DICT_ERRORS, ids=[c[1][0] + "|" + c[1][-1] for c in DICT_ERRORS]
)
def test_regimen_from_dict_error(doc, fragments):
    with pytest.raises(RegimenError, match=re.escape(fragments[0])) as ei:
        Regimen.from_dict(copy.deepcopy(doc), file=RF)
    msg = str(ei.value)
    assert msg.startswith(f"{RF}: ")
    assert isinstance(ei.value, ValueError)
    for frag in fragments:
        assert frag in msg


def test_regimen_toml_syntax_error_names_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[[bolus]]\namount = 5 mg\nat = '0 h'\n", encoding="utf-8")
    with pytest.raises(RegimenError, match=re.escape(f"{path}: not valid TOML")) as ei:
        load_regimen(path)
    assert "line 2" in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_regimen_toml_file_error_names_file(tmp_path):
    path = tmp_path / "unknown_key.toml"
    path.write_text("[[infusion]]\nrate = '5 mg/h'\nstart = '0 h'\nstop = '1 h'\nramp = 2\n",
                    encoding="utf-8")  # fmt: skip
    with pytest.raises(RegimenError, match=re.escape(f"{path}: `infusion[0].ramp`")):
        load_regimen(str(path))


def test_regimen_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(RegimenError, match=re.escape(f"{path}: regimen file not found")):
        load_regimen(path)


def test_regimen_constructor_checks_doses():
    with pytest.raises(RegimenError, match="at least one dose"):
        Regimen(())


# ----------------------------------------------------------------------------- regimen: positive

ONE_LINE = ("0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; "
            "0.05 mg/kg/h from 4 h for 44 h; 10 mg over 30 min from 6 h")  # fmt: skip
TOML = """\
[regimen]
name = "loading + maintenance"
description = "test"

[[bolus]]
amount = "0.3 mg/kg"
at = "0 h"

[[infusion]]
rate = "0.2 mg/kg/h"
start = "0 h"
stop = "4 h"

[[infusion]]
rate = "0.05 mg/kg/h"
start = "240 min"
duration = "44 h"

[[infusion]]
total = "10 mg"
start = "6 h"
duration = "30 min"
"""


def test_toml_and_one_line_forms_agree(tmp_path):
    path = tmp_path / "reg.toml"
    path.write_text(TOML, encoding="utf-8")
    from_file = load_regimen(path)
    from_line = load_regimen(ONE_LINE)
    assert from_file.name == "loading + maintenance"
    assert from_file.file == str(path)
    assert from_file.doses == from_line.doses
    for w in (50.0, 70.0, 93.5):
        a, b = from_file.event_table(w), from_line.event_table(w)
        np.testing.assert_array_equal(a.t, b.t)
        np.testing.assert_array_equal(a.rate, b.rate)
        np.testing.assert_array_equal(a.bolus, b.bolus)
    ev = from_line.event_table(70.0)
    np.testing.assert_array_equal(ev.t, [0.0, 4.0, 6.0, 6.5, 48.0])
    np.testing.assert_allclose(ev.rate, [14.0, 3.5, 23.5, 3.5, 0.0], rtol=1e-15)
    np.testing.assert_array_equal(ev.bolus, [21.0, 0.0, 0.0, 0.0, 0.0])


def test_overlapping_infusions_add_up():
    reg = Regimen.parse("10 mg/h from 0 h to 4 h; 5 mg/h from 1 h to 2 h; "
                        "2 mg/h from 1 h to 6 h; 1 mg bolus at 1 h")  # fmt: skip
    ev = reg.event_table()
    np.testing.assert_array_equal(ev.t, [0.0, 1.0, 2.0, 4.0, 6.0])
    np.testing.assert_array_equal(ev.rate, [10.0, 17.0, 12.0, 2.0, 0.0])
    np.testing.assert_array_equal(ev.bolus, [0.0, 1.0, 0.0, 0.0, 0.0])


def test_identical_infusions_double_the_rate():
    ev = Regimen.parse("5 mg/h from 0 h to 1 h; 5 mg/h from 0 h to 1 h").event_table()
    np.testing.assert_array_equal(ev.rate, [10.0, 0.0])


def test_boluses_at_same_time_add_up():
    ev = Regimen.parse("5 mg bolus at 1 h; 3 mg bolus at 60 min").event_table()
    np.testing.assert_array_equal(ev.t, [1.0])
    np.testing.assert_array_equal(ev.bolus, [8.0])


@pytest.mark.parametrize(
    ("for_form", "to_form"),
    [
        ("5 mg/h from 1 h for 90 min", "5 mg/h from 1 h to 2.5 h"),
        ("0.2 mg/kg/h from 30 min for 4 h", "0.2 mg/kg/h from 0.5 h to 270 min"),
        ("5 ug/kg/min from 0 h for 2 day", "5 ug/kg/min from 0 h to 48 h"),
    ],
)
def test_for_equals_to(for_form, to_form):
    a, b = Regimen.parse(for_form), Regimen.parse(to_form)
    assert a.doses == b.doses
    ea, eb = a.event_table(70.0), b.event_table(70.0)
    np.testing.assert_array_equal(ea.t, eb.t)
    np.testing.assert_array_equal(ea.rate, eb.rate)


def test_bolus_over_duration_is_an_infusion_of_same_total():
    reg = Regimen.parse("5 mg bolus at 1 h over 5 min")
    (dose,) = reg.doses
    assert isinstance(dose, Bolus)
    assert dose.duration == pytest.approx(5 / 60, rel=1e-15)
    ev = reg.event_table()
    np.testing.assert_allclose(ev.t, [1.0, 1.0 + 5 / 60], rtol=1e-15)
    assert ev.rate[0] == pytest.approx(60.0, rel=1e-15)  # 5 mg / (1/12 h)
    assert ev.rate[-1] == 0.0
    np.testing.assert_array_equal(ev.bolus, [0.0, 0.0])
    assert ev.total_dose == pytest.approx(5.0, rel=1e-15)
    assert reg.infusion_ends() == [pytest.approx(1.0 + 5 / 60, rel=1e-15)]
    # same as the total-dose form
    ev2 = Regimen.parse("5 mg over 5 min from 1 h").event_table()
    np.testing.assert_allclose(ev2.rate, ev.rate, rtol=1e-15)
    np.testing.assert_allclose(ev2.t, ev.t, rtol=1e-15)


def test_total_dose_equals_sum_of_doses():
    reg = Regimen.parse(ONE_LINE)
    w = 70.0
    expected = 0.3 * w + 0.2 * w * 4 + 0.05 * w * 44 + 10.0  # 21 + 56 + 154 + 10
    assert expected == pytest.approx(241.0)
    ev = reg.event_table(w)
    assert ev.total_dose == pytest.approx(241.0, rel=1e-14)
    by_dose = 0.0
    for d in reg.doses:
        if isinstance(d, Bolus):
            by_dose += d.amount.scaled(w)
        else:
            assert isinstance(d, Infusion)
            by_dose += d.rate_value().scaled(w) * (d.stop - d.start)
    assert ev.total_dose == pytest.approx(by_dose, rel=1e-14)


def test_parse_accepts_newlines_and_case():
    a = Regimen.parse("5 mg BOLUS AT 0 h\n10 mg/h FROM 0 h UNTIL 2 h")
    b = Regimen.parse("5 mg bolus at 0 h; 10 mg/h from 0 h to 2 h")
    assert a.doses == b.doses
