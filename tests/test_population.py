"""Virtual-patient populations (pkpd.population): presets, sampling, CSV import, validation.

Distributions are checked against mathematics, not against stored output: sample moments
against the analytic moments of the truncated normal / log-normal (scipy.stats.truncnorm),
within a few standard errors at n = 200,000 with a fixed seed, and the samples themselves
against the inverse CDF of the very uniforms the generator produced (so truncation is exact,
not clipping). Every error path checks that the message names the file, the key or
row/column, and the offending value.
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
import warnings
from pathlib import Path

import mpmath
import numpy as np
import pytest
from scipy import stats

from pkpd.errors import CovariateRangeWarning, PkpdError
from pkpd.inputs.population import (
    SEXES,
    TAGS,
    CovariateTable,
    LogNormal,
    Population,
    PopulationError,
    TruncatedNormal,
    available_populations,
    load_population,
    populations_dir,
)
from pkpd.running.cohort import simulate_cohort

PRESETS = ("fibromyalgia_outpatients", "healthy_volunteers", "spine_fusion_china")
N = 200_000
FILE = "test-pop.toml"
SRC = {"source": "test fixture", "tag": "paper"}


def _raw(name: str) -> dict:
    with open(populations_dir() / f"{name}.toml", "rb") as fh:
        return tomllib.load(fh)


# A synthetic population whose truncation matters (age window cuts both tails, BMI window
# cuts the log-normal), with a categorical and a fixed covariate.
SYNTH = {
    "schema_version": 1,
    "population": {"name": "synthetic", "description": "test population", "source": "tests"},
    "sex": {"female_fraction": 0.37, **SRC},
    "age": {"mean": 50.0, "sd": 20.0, "low": 30, "high": 75, **SRC},
    "height": {
        "female": {"mean": 162.0, "sd": 6.5, **SRC},
        "male": {"mean": 176.0, "sd": 7.5, "low": 150, "high": 200, **SRC},
    },
    "bmi": {
        "female": {"mean": 26.0, "sd": 5.0, "low": 18.5, "high": 40, **SRC},
        "male": {"mean": 27.0, "sd": 4.0, **SRC},
    },
    "categorical": {"race": {"probabilities": {"asian": 0.2, "black": 0.3, "white": 0.5}, **SRC}},
    "fixed": {"site": {"value": "Beijing", **SRC}, "asa": {"value": 2, **SRC}},
}


def synth(**changes) -> dict:
    d = copy.deepcopy(SYNTH)
    d.update(changes)
    return d


@pytest.fixture(scope="module")
def big():
    """One large cohort of the synthetic population (drawn once)."""
    pop = Population.from_dict(SYNTH, file=FILE)
    return pop, pop.sample(np.random.default_rng(20240601), N)


def _within(x: np.ndarray, mean: float, sd: float, k: float = 4.0) -> None:
    """Sample mean and sd of `x` equal (mean, sd) within k standard errors."""
    n = x.size
    assert abs(x.mean() - mean) < k * sd / math.sqrt(n), (x.mean(), mean)
    # SE of the sample sd, from the sample's own fourth moment
    m4 = np.mean((x - x.mean()) ** 4)
    se_sd = math.sqrt(max(m4 - x.var() ** 2, 0.0) / n) / (2 * sd)
    assert abs(x.std() - sd) < k * se_sd + 1e-12, (x.std(), sd)


# ----------------------------------------------------------------------------- presets


def test_populations_dir_is_the_package_folder():
    assert populations_dir().is_dir()
    assert (populations_dir() / "__init__.py").is_file()
    assert set(PRESETS) <= set(available_populations())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_describes_every_source(name):
    pop = load_population(name)
    assert pop.name == name
    assert pop.file is not None and Path(pop.file).name == f"{name}.toml"
    assert pop.covariates[:5] == ("sex", "age", "height", "bmi", "weight")
    text = pop.describe()
    assert text.startswith(f"population {name}:")
    assert pop.source in text
    for key, num in pop.numbers().items():
        assert num.tag in TAGS, key
        assert num.source in text, f"{key}: source not in describe()"
        if num.tag in ("assumed", "illustrative"):
            assert num.note and num.note in text
    # a path loads the same population
    again = load_population(populations_dir() / f"{name}.toml")
    assert again.numbers() == pop.numbers()
    assert load_population(pop) is pop


def _numbers_in(node, path=""):
    """Yield (path, table) for every number of a raw TOML tree and the table that holds it."""
    for k, v in node.items():
        here = f"{path}.{k}" if path else k
        if isinstance(v, dict):
            if "value" in v and not isinstance(v["value"], dict):
                yield here, v
            else:
                yield from _numbers_in(v, here)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            yield here, node
        elif isinstance(v, list):
            assert all(not isinstance(x, int | float) for x in v), here


@pytest.mark.parametrize("name", PRESETS)
def test_every_number_in_a_preset_file_has_source_and_tag(name):
    raw = _raw(name)
    found = 0
    for path, table in _numbers_in(raw):
        if path == "schema_version":
            continue
        found += 1
        assert "source" in table and table["source"].strip(), path
        assert table.get("tag") in TAGS, path
        if table["tag"] in ("assumed", "illustrative"):
            assert table.get("note"), path
    assert found >= 9  # female fraction, age, and height and BMI means and sds
    # probabilities tables (categorical) are covered by their table's source too
    for cat in raw.get("categorical", {}).values():
        assert cat["tag"] in TAGS


def test_presets_are_consistent_with_their_sources():
    """Spot checks of preset numbers against the values quoted in their own files."""
    hv = load_population("healthy_volunteers")
    assert hv.female_fraction.value == pytest.approx(22 / 48, abs=1e-6)
    # Pooled Otto 2021 age: the truncated distribution has exactly the pooled moments.
    assert hv.age.moments() == pytest.approx((23.3875, 4.5933), abs=1e-6)
    assert hv.age.low.value == 18
    spine = load_population("spine_fusion_china")
    assert (spine.age.low.value, spine.age.high.value) == (18, 80)
    assert spine.female_fraction.value == pytest.approx(95 / 157, abs=1e-4)
    assert spine.sample(np.random.default_rng(0), 3)["race"].tolist() == ["asian"] * 3


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", [*PRESETS, "synthetic"])
def test_same_seed_same_cohort_different_seed_different(name):
    pop = Population.from_dict(SYNTH) if name == "synthetic" else load_population(name)
    a = pop.sample(np.random.default_rng(7), 500)
    b = pop.sample(np.random.default_rng(7), 500)
    c = pop.sample(np.random.default_rng(8), 500)
    assert list(a) == list(pop.covariates)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    for k in ("age", "height", "bmi", "weight"):
        assert a[k].dtype == np.float64 and a[k].shape == (500,)
        assert not np.array_equal(a[k], c[k])
    assert a["sex"].dtype.kind == "U" and set(a["sex"]) <= {"female", "male"}


def test_draws_use_one_uniform_call_per_variable_whatever_the_truncation():
    # A narrow, far-tail window consumes exactly as many numbers as no window at all.
    narrow = synth(age={"mean": 20.0, "sd": 5.0, "low": 35, "high": 36, **SRC})
    for data in (SYNTH, narrow):
        pop = Population.from_dict(data)
        rng1, rng2 = np.random.default_rng(11), np.random.default_rng(11)
        pop.sample(rng1, 1000)
        for _ in range(4 + len(pop.categorical)):  # sex, age, height, bmi, categoricals
            rng2.random(1000)
        assert rng1.random() == rng2.random()


def test_samples_are_the_exact_inverse_cdf_of_the_generator_uniforms():
    pop = Population.from_dict(SYNTH)
    x = pop.sample(np.random.default_rng(3), 2000)
    u = np.random.default_rng(3).random((5, 2000))
    female = u[0] < 0.37
    np.testing.assert_array_equal(x["sex"] == "female", female)
    a, b = (30 - 50) / 20, (75 - 50) / 20
    # The closed-form inverse CDF agrees with scipy's to 1e-12 (see the test below).
    np.testing.assert_allclose(
        x["age"], stats.truncnorm.ppf(u[1], a, b, loc=50, scale=20), rtol=1e-12
    )
    # BMI of women: log-normal truncated on the log scale to [ln 18.5, ln 40]
    sigma = math.sqrt(math.log1p((5 / 26) ** 2))
    mu = math.log(26) - sigma**2 / 2
    a, b = (math.log(18.5) - mu) / sigma, (math.log(40) - mu) / sigma
    want = np.exp(stats.truncnorm.ppf(u[3][female], a, b, loc=mu, scale=sigma))
    np.testing.assert_allclose(x["bmi"][female], want, rtol=1e-12)


def test_sample_validates_rng_and_n_and_leaves_global_state_alone():
    pop = Population.from_dict(SYNTH)
    with pytest.raises(TypeError, match=re.escape("numpy.random.Generator")):
        pop.sample(np.random.RandomState(0), 3)
    with pytest.raises(TypeError, match="Generator"):
        pop.sample(0, 3)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="`n`"):
            pop.sample(np.random.default_rng(0), bad)
    empty = pop.sample(np.random.default_rng(0), 0)
    assert all(v.shape == (0,) for v in empty.values())
    # the legacy global state is what must stay untouched
    before = np.random.get_state()  # noqa: NPY002
    pop.sample(np.random.default_rng(0), 100)
    after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(before[1], after[1]) and before[2:] == after[2:]


# ----------------------------------------------------------------------------- distributions


def test_female_fraction_within_four_standard_errors(big):
    _, x = big
    p = 0.37
    assert abs(np.mean(x["sex"] == "female") - p) < 4 * math.sqrt(p * (1 - p) / N)


def test_age_is_the_exact_truncated_normal(big):
    pop, x = big
    age = x["age"]
    assert age.min() >= 30 and age.max() <= 75
    a, b = (30 - 50) / 20, (75 - 50) / 20
    dist = stats.truncnorm(a, b, loc=50, scale=20)
    _within(age, dist.mean(), dist.std())
    assert pop.age.moments() == pytest.approx((dist.mean(), dist.std()), rel=1e-12)
    # not clipped: no pile-up on the bounds, and the whole shape matches
    assert np.mean(age == 30) == 0 and np.mean(age == 75) == 0
    assert stats.kstest(age[:20_000], dist.cdf).pvalue > 1e-3


def test_height_by_sex(big):
    _, x = big
    f = x["sex"] == "female"
    _within(x["height"][f], 162.0, 6.5)
    m = stats.truncnorm((150 - 176) / 7.5, (200 - 176) / 7.5, loc=176, scale=7.5)
    hm = x["height"][~f]
    assert hm.min() >= 150 and hm.max() <= 200
    _within(hm, m.mean(), m.std())


def test_log_bmi_moments_match_the_lognormal_parameters(big):
    pop, x = big
    f = x["sex"] == "female"
    # men: untruncated, so log(BMI) ~ Normal(mu, sigma) exactly and E[BMI] = 27, SD = 4
    sigma = math.sqrt(math.log1p((4 / 27) ** 2))
    mu = math.log(27) - sigma**2 / 2
    assert (pop.bmi["male"].mu, pop.bmi["male"].sigma) == pytest.approx((mu, sigma), rel=1e-14)
    _within(np.log(x["bmi"][~f]), mu, sigma)
    _within(x["bmi"][~f], 27.0, 4.0)
    # women: truncated on the log scale
    bf = x["bmi"][f]
    assert bf.min() >= 18.5 and bf.max() <= 40
    d = pop.bmi["female"]
    a, b = d.standardized()
    t = stats.truncnorm(a, b, loc=d.mu, scale=d.sigma)
    _within(np.log(bf), t.mean(), t.std())
    m_exact, s_exact = d.moments()
    _within(bf, m_exact, s_exact)
    # the closed-form truncated log-normal moments agree with numerical integration
    assert m_exact == pytest.approx(t.expect(np.exp), rel=1e-9)


def test_weight_is_bmi_times_height_squared_and_correlates_with_height(big):
    _, x = big
    np.testing.assert_allclose(x["weight"], x["bmi"] * (x["height"] / 100) ** 2, rtol=1e-12)
    assert np.corrcoef(x["weight"], x["height"])[0, 1] > 0.3
    for sex in ("female", "male"):
        s = x["sex"] == sex
        assert np.corrcoef(x["weight"][s], x["height"][s])[0, 1] > 0.1


def test_categorical_and_fixed_covariates(big):
    pop, x = big
    assert pop.covariates == ("sex", "age", "height", "bmi", "weight", "race", "site", "asa")
    for level, p in {"asian": 0.2, "black": 0.3, "white": 0.5}.items():
        assert abs(np.mean(x["race"] == level) - p) < 4 * math.sqrt(p * (1 - p) / N)
    assert set(x["race"]) == {"asian", "black", "white"}
    assert (x["site"] == "Beijing").all() and x["site"].dtype.kind == "U"
    assert x["asa"].dtype == np.float64 and (x["asa"] == 2.0).all()


def test_truncated_moments_mode_solves_for_the_parent_distribution():
    data = synth(
        age={"mean": 23.3875, "sd": 4.5933, "low": 18, "moments": "truncated", **SRC},
        bmi={"mean": 22.0, "sd": 2.5, "low": 18.5, "high": 30, "moments": "truncated", **SRC},
    )
    pop = Population.from_dict(data)
    assert pop.age.moments() == pytest.approx((23.3875, 4.5933), rel=1e-9)
    assert pop.bmi["female"].moments() == pytest.approx((22.0, 2.5), rel=1e-9)
    x = pop.sample(np.random.default_rng(5), N)
    assert x["age"].min() >= 18
    _within(x["age"], 23.3875, 4.5933)
    _within(x["bmi"], 22.0, 2.5)
    assert "parent parameters solved" in pop.describe()


@pytest.mark.parametrize("name", PRESETS)
def test_preset_cohorts_match_their_analytic_moments(name):
    pop = load_population(name)
    x = pop.sample(np.random.default_rng(99), N)
    f = x["sex"] == "female"
    p = pop.female_fraction.value
    assert abs(f.mean() - p) < 4 * math.sqrt(p * (1 - p) / N)
    _within(x["age"], *pop.age.moments())
    lo, hi = pop.age.bounds()
    assert x["age"].min() >= lo and x["age"].max() <= hi
    for sex, mask in (("female", f), ("male", ~f)):
        _within(x["height"][mask], *pop.height[sex].moments())
        d = pop.bmi[sex]
        t = stats.truncnorm(*d.standardized(), loc=d.mu, scale=d.sigma)
        _within(np.log(x["bmi"][mask]), t.mean(), t.std())
    np.testing.assert_allclose(x["weight"], x["bmi"] * (x["height"] / 100) ** 2, rtol=1e-12)
    assert np.corrcoef(x["weight"], x["height"])[0, 1] > 0


def test_distribution_objects_are_the_documented_types():
    pop = Population.from_dict(SYNTH)
    assert isinstance(pop.age, TruncatedNormal)
    assert isinstance(pop.bmi["male"], LogNormal)
    one = Population.from_dict(synth(height={"mean": 170.0, "sd": 8.0, **SRC}))
    assert one.height["female"] is one.height["male"]


# ----------------------------------------------------------------------------- CSV import


def _csv(tmp_path: Path, text: str, name: str = "cov.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8", newline="")
    return p


def test_csv_units_in_headers_are_converted_exactly(tmp_path):
    path = _csv(
        tmp_path,
        "id,Sex,weight [lb],height [in],age [year],crcl [mL/min],site\n"
        "p1,F,150,65,40,90,A\n"
        "p2,male,200.5,70.25,55.5,71,B\n"
        "p3,m,132,60,18,100,A\n",
    )
    t = CovariateTable.from_csv(path, required=("weight", "height", "bmi", "sex"))
    assert t.n == len(t) == 3 and t.file == str(path)
    c = t.covariates
    np.testing.assert_allclose(c["weight"], np.array([150, 200.5, 132]) * 0.45359237, rtol=1e-12)
    np.testing.assert_allclose(c["height"], np.array([65, 70.25, 60]) * 2.54, rtol=1e-12)
    np.testing.assert_array_equal(c["age"], [40, 55.5, 18])
    np.testing.assert_allclose(c["bmi"], c["weight"] / (c["height"] / 100) ** 2, rtol=1e-12)
    assert c["sex"].tolist() == ["female", "male", "male"]
    assert c["id"].tolist() == ["p1", "p2", "p3"]
    assert c["crcl"].dtype == np.float64 and c["site"].tolist() == ["A", "B", "A"]
    assert t.units == {
        "weight": "kg",
        "height": "cm",
        "age": "year",
        "crcl": "mL/min",
        "bmi": "kg/m^2",
    }


def test_csv_defaults_metres_bom_crlf_blank_lines_and_derived_weight(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(
        "\ufeffsex,height [m],BMI [kg/m^2]\r\nFemale,1.6,25\r\n\r\nMALE,1.8,20\r\n".encode()
    )
    t = CovariateTable.from_csv(path, required=("weight",))
    assert t.n == 2
    np.testing.assert_allclose(t.covariates["height"], [160, 180], rtol=1e-12)
    np.testing.assert_allclose(t.covariates["weight"], [25 * 1.6**2, 20 * 1.8**2], rtol=1e-12)
    plain = CovariateTable.from_csv(_csv(tmp_path, "weight,height,age\n70,175,40\n", "d.csv"))
    assert plain.covariates["weight"][0] == 70 and plain.covariates["height"][0] == 175
    assert plain.units["age"] == "year"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("weight,height\n70,\n", r"row 1 \(line 2\): column `height`: empty cell"),
        ("weight,height\n70,170\n80,abc\n", r"row 2 \(line 3\): column `height`: 'abc' is not"),
        ("weight,height\n70,170\n\n80,nan\n", r"row 2 \(line 4\): column `height`: 'nan' is not"),
        ("weight\n0\n", r"row 1 \(line 2\): column `weight`: impossible value '0'"),
        ("weight\n70\n701\n", r"row 2 \(line 3\): column `weight`: impossible value '701'"),
        ("weight [lb]\n1600\n", r"column `weight \[lb\]`: impossible value '1600' = 725\.7"),
        ("height\n-3\n", r"row 1 \(line 2\): column `height`: impossible value '-3'"),
        ("height\n301\n", r"column `height`: impossible value '301'"),
        ("height [m]\n3.2\n", r"column `height \[m\]`: impossible value '3.2' = 320"),
        ("age\n-1\n", r"row 1 \(line 2\): column `age`: impossible value '-1'"),
        ("age\n131\n", r"column `age`: impossible value '131'"),
        ("bmi\n4.9\n", r"column `bmi`: impossible value '4.9'"),
        ("bmi\n151\n", r"column `bmi`: impossible value '151'"),
        ("weight,height\n30,250\n", r"row 1 \(line 2\): column `bmi \(computed from weight"),
        ("sex\nF\nX\n", r"row 2 \(line 3\): column `sex`: unknown sex 'X'"),
        (
            "sex,weight\nfemale,70\nwoman,60\n",
            r"row 2 \(line 3\): column `sex`: unknown sex 'woman'",
        ),
        ("weight,Weight [lb]\n70,150\n", r"line 1: duplicate column `weight`"),
        ("id,weight\na,70\na,71\n", r"row 2 \(line 3\): column `id`: duplicate id 'a'"),
        ("weight,height\n70,170,5\n", r"row 1 \(line 2\): expected 2 cells .* got 3"),
        ("weight [cm]\n70\n", r"column `weight \[cm\]`: unit 'cm'"),
        ("weight [furlongs per fortnight]\n70\n", r"column `weight \[furlongs per fortnight\]`"),
        ("bmi [kg]\n22\n", r"column `bmi \[kg\]`: unknown BMI unit 'kg'"),
        ("sex [kg]\nF\n", r"column `sex \[kg\]`: sex takes no unit"),
        ("id [kg]\na\n", r"column `id \[kg\]`: id takes no unit"),
        ("weight,,height\n70,1,170\n", r"line 1: column 2: cannot read header ''"),
        ("", r"empty file"),
        ("\n\n", r"empty file"),
        ("weight,height\n", r"no data rows"),
    ],
)
def test_csv_errors_name_file_row_column_and_value(tmp_path, text, pattern):
    path = _csv(tmp_path, text)
    with pytest.raises(PopulationError, match=pattern) as info:
        CovariateTable.from_csv(path)
    assert str(path) in str(info.value)


def test_csv_missing_required_column_and_missing_file(tmp_path):
    path = _csv(tmp_path, "age,sex\n40,F\n")
    with pytest.raises(
        PopulationError, match=r"missing required column `weight` \(columns: age, sex\)"
    ):
        CovariateTable.from_csv(path, required=("weight",))
    assert CovariateTable.from_csv(path, required=("age",)).n == 1
    assert CovariateTable.from_csv(path, required="sex").n == 1
    with pytest.raises(PopulationError, match="cannot read the file"):
        CovariateTable.from_csv(tmp_path / "absent.csv")


@pytest.mark.parametrize("sep", [";", "\t"])
def test_csv_with_semicolons_or_tabs_is_read_cell_by_cell(tmp_path, sep):
    """Issue 12: a spreadsheet's `;` export was read as one column (no covariates at all)."""
    text = sep.join(["id", "weight [lb]", "age", "race"]) + "\n"
    text += sep.join(["a", "154.32", "30", "asian"]) + "\n" + sep.join(["b", "200", "40.5", "x"])
    t = CovariateTable.from_csv(_csv(tmp_path, text + "\n"))
    assert set(t.covariates) == {"id", "weight", "age", "race"}
    np.testing.assert_allclose(t.covariates["weight"], np.array([154.32, 200]) * 0.45359237)
    np.testing.assert_array_equal(t.covariates["age"], [30.0, 40.5])
    np.testing.assert_array_equal(t.covariates["race"], ["asian", "x"])


def test_csv_comma_stays_the_separator_when_the_header_has_one(tmp_path):
    t = CovariateTable.from_csv(_csv(tmp_path, "id,note\na,x;y\n"))
    np.testing.assert_array_equal(t.covariates["note"], ["x;y"])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        # a wrong unit gives an impossible weight: 70 mg = 7e-5 kg (issue 12)
        ("weight [mg]\n70\n", r"column `weight \[mg\]`: impossible value '70' = 7e-05 kg"),
        ("weight [g]\n150\n", r"impossible value '150' = 0\.15 kg"),
        ("weight\n0.19\n", r"impossible value '0.19'"),
        ("height\n19\n", r"column `height`: impossible value '19'"),
        ("height [m]\n2.81\n", r"impossible value '2.81' = 281 cm"),
        ("height [mm]\n1750\n70\n", r"row 2 \(line 3\): column `height \[mm\]`: impossible"),
        ("age\n1000\n", r"column `age`: impossible value '1000'"),
        ("age\n-1\n30\n-2\n", r"row 1 \(line 2\).*-1.*; 2 rows are outside"),
    ],
)
def test_csv_physiologically_impossible_values_are_errors(tmp_path, text, pattern):
    path = _csv(tmp_path, text)
    with pytest.raises(PopulationError, match=pattern) as info:
        CovariateTable.from_csv(path)
    assert str(path) in str(info.value)
    assert "physiological plausibility limits, not the model's studied range" in str(info.value)


def test_csv_limits_are_inclusive_and_humane(tmp_path):
    """The plausibility limits admit every real patient: a 0.5 kg neonate, a 2.5 m adult."""
    text = "weight,height,age\n0.5,30,0\n250,250,120\n"
    t = CovariateTable.from_csv(_csv(tmp_path, text))
    np.testing.assert_array_equal(t.covariates["weight"], [0.5, 250])


@pytest.mark.parametrize(
    ("encoding", "hint"),
    [("latin-1", "0xe9 at offset"), ("utf-16", "UTF-16"), ("utf-16-le", "UTF-16")],
)
def test_csv_in_another_encoding_names_the_file_and_utf8(tmp_path, encoding, hint):
    path = tmp_path / "pts.csv"
    path.write_bytes("id,weight,age\nJérôme,70,30\n".encode(encoding))
    with pytest.raises(PopulationError) as info:
        CovariateTable.from_csv(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not UTF-8 text"), msg
    assert hint in msg and "expected a CSV file encoded as UTF-8" in msg


# ----------------------------------------------------------------------------- loader errors


def _err(data: dict, *parts: str) -> str:
    with pytest.raises(PopulationError) as info:
        Population.from_dict(data, file=FILE)
    msg = str(info.value)
    assert msg.startswith(f"{FILE}: "), msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


def _set(data: dict, dotted: str, value) -> dict:
    d = copy.deepcopy(data)
    node = d
    *path, last = dotted.split(".")
    for k in path:
        node = node[k]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return d


_DELETE = object()


@pytest.mark.parametrize(
    ("dotted", "value", "parts"),
    [
        ("colour", 1, ["`colour`", "unknown key"]),
        ("age.median", 50, ["`age.median`", "unknown key"]),
        ("schema_version", 2, ["`schema_version`", "2"]),
        ("population.name", "has space", ["`population.name`", "'has space'"]),
        ("age", _DELETE, ["`age`", "missing"]),
        ("age.source", _DELETE, ["`age.source`", "every number must cite its source"]),
        ("age.tag", "verified", ["`age.tag`", "'verified'", "illustrative"]),
        ("age.tag", "illustrative", ["`age.note`", "'illustrative'"]),
        ("age.sd", 0, ["`age.sd`", "must be positive", "0"]),
        ("age.sd", -2.5, ["`age.sd`", "-2.5"]),
        ("age.mean", "fifty", ["`age.mean`", "'fifty'"]),
        ("age.mean", True, ["`age.mean`", "True"]),
        ("age.mean", math.nan, ["`age.mean`", "nan"]),
        ("age.mean", 140.0, ["`age.mean`", "140.0", "plausible"]),
        ("age.low", 80, ["`age.low`", "80", "75"]),
        ("age.low", 75, ["`age.low`", "must be less than"]),
        ("age.unit", "month", ["`age.unit`", "'month'"]),
        ("age.moments", "sample", ["`age.moments`", "'sample'"]),
        ("age.low", {"value": 30}, ["`age.low.source`", "missing"]),
        ("age.low", {"value": 30, "source": "x", "tag": "bogus"}, ["`age.low.tag`", "'bogus'"]),
        ("sex.female_fraction", 1.5, ["`sex.female_fraction`", "[0, 1]", "1.5"]),
        ("sex.female_fraction", -0.1, ["`sex.female_fraction`", "-0.1"]),
        ("sex.female_fraction", _DELETE, ["`sex.female_fraction`", "missing"]),
        ("height.male", _DELETE, ["`height.male`", "missing"]),
        ("height.child", {"mean": 1, "sd": 1}, ["`height.child`", "per-sex"]),
        ("height.female.mean", 0.0, ["`height.female.mean`", "0.0"]),
        ("bmi.female.low", 2.0, ["`bmi.female.low`", "2.0", "plausible"]),
        ("bmi.male.sd", 0.0, ["`bmi.male.sd`", "positive"]),
        ("categorical.race.probabilities", {"a": 0.5, "b": 0.4}, ["probabilities", "sum to 1"]),
        (
            "categorical.race.probabilities",
            {"a": 1.2, "b": -0.2},
            ["`categorical.race.probabilities.a`", "1.2"],
        ),
        ("categorical.race.probabilities", {}, ["`categorical.race.probabilities`", "{}"]),
        (
            "categorical.sex",
            {"probabilities": {"f": 1.0}, **SRC},
            ["`categorical.sex`", "reserved"],
        ),
        ("fixed.race", {"value": "asian", **SRC}, ["`fixed.race`", "already defined"]),
        ("fixed.site.value", "  ", ["`fixed.site.value`"]),
        ("fixed.site.colour", "red", ["`fixed.site.colour`", "unknown key"]),
    ],
)
def test_loader_rejects_bad_files_naming_file_key_and_value(dotted, value, parts):
    _err(_set(SYNTH, dotted, value), *parts)


def test_loader_rejects_impossible_windows_and_infeasible_truncated_moments():
    far = synth(age={"mean": 20.0, "sd": 1.0, "low": 100, "high": 120, **SRC})
    _err(far, "`age.low`", "holds only")
    # A normal truncated below at 18 cannot have mean 19 and sd 5 (sd < mean - low).
    bad = synth(age={"mean": 19.0, "sd": 5.0, "low": 18, "moments": "truncated", **SRC})
    _err(bad, "`age.sd`", "no TruncatedNormal", "19.0", "5.0")
    outside = synth(age={"mean": 17.0, "sd": 5.0, "low": 18, "moments": "truncated", **SRC})
    _err(outside, "`age.low`", "inside the window")


def test_loader_rejects_a_mutated_preset_too():
    raw = _raw("spine_fusion_china")
    raw["height"]["female"]["sd"] = -4.0
    _err(raw, "`height.female.sd`", "-4.0")
    raw = _raw("healthy_volunteers")
    raw["height"]["male"]["mean"]["tag"] = "guess"
    _err(raw, "`height.male.mean.tag`", "'guess'")


def test_load_population_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("schema_version = 1\n[population\n")
    with pytest.raises(PopulationError, match=r"bad\.toml: not valid TOML"):
        load_population(bad)
    with pytest.raises(PopulationError, match=r"unknown population 'nope'.*healthy_volunteers"):
        load_population("nope")
    with pytest.raises(PopulationError, match="not found"):
        load_population(tmp_path / "absent.toml")
    good = tmp_path / "mine.toml"
    text = (populations_dir() / "healthy_volunteers.toml").read_text()
    good.write_text(text.replace("sd = 2.0160", "sd = -1"))
    with pytest.raises(PopulationError, match=re.escape(f"{good}: `bmi.sd`")):
        load_population(good)


def test_population_error_is_a_pkpd_error_and_a_value_error():
    assert issubclass(PopulationError, PkpdError)
    assert issubclass(PopulationError, ValueError)


@pytest.mark.parametrize(
    ("a", "b"),
    [(-1, 2), (-np.inf, 1.5), (0.5, np.inf), (-3, -0.2), (2, 5), (-8, -6), (-0.1, 0.1),
     (-np.inf, np.inf), (5, 9), (-40, -38)],
)  # fmt: skip
def test_closed_form_truncated_normal_moments_equal_scipy(a, b):
    from scipy import stats

    from pkpd.inputs.population import _truncnorm_moments

    m, s = _truncnorm_moments(a, b, 3.0, 2.0)
    d = stats.truncnorm(a, b, loc=3.0, scale=2.0)
    assert m == pytest.approx(d.mean(), rel=1e-12, abs=1e-12)
    assert s == pytest.approx(d.std(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "a, b",
    [(-2.0, 2.0), (-1.0, math.inf), (0.5, 3.0), (-math.inf, -0.3), (1.0, math.inf),
     (-5.0, -1.0), (-3.0, 0.2), (2.9, 3.0), (4.0, 8.0), (-8.0, -4.0)],
)  # fmt: skip
def test_fast_truncnorm_ppf_agrees_with_scipy_and_respects_the_window(a, b):
    """The closed-form inverse CDF (both sides of the mean, narrow windows through scipy's
    log-space path) against the definition ``Phi^-1(Phi(a) + u (Phi(b) - Phi(a)))`` in
    40-digit arithmetic (mpmath), to 1e-14 on the standard scale, including `u` within
    rounding of 0 and 1 (scipy 1.17's truncnorm.ppf errs by 2e-3 at u = 1 - 2^-53 on
    (-1, inf)); and against scipy.stats.truncnorm.ppf on 100,000 draws away from the ends."""
    from pkpd.inputs.population import _truncnorm_ppf

    mpmath.mp.dps = 40

    def phi(x):
        return mpmath.ncdf(x) if math.isfinite(x) else mpmath.mpf(x > 0)

    def exact(v):
        p = phi(a) + mpmath.mpf(v) * (phi(b) - phi(a))
        return float(mpmath.sqrt(2) * mpmath.erfinv(2 * p - 1))

    ends = [0.0, 1.0 - 2.0**-53, 1e-12, 0.5, 1.0 - 1e-12]
    few = np.concatenate([np.random.default_rng(5).random(300), ends])
    ref = np.array([exact(v) for v in few])
    got = _truncnorm_ppf(few, a, b)
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(got), fin)
    assert np.all(np.abs(got[fin] - ref[fin]) <= 1e-14 * np.maximum(1.0, np.abs(ref[fin])))

    u = np.random.default_rng(3).random(100_000)
    u = np.concatenate([u, ends])
    x = _truncnorm_ppf(u, a, b)
    ref = stats.truncnorm.ppf(u, a, b)
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(x), finite)
    inner = finite & (u > 1e-10) & (u < 1.0 - 1e-10)
    err = np.abs(x[inner] - ref[inner]) / np.maximum(1.0, np.abs(ref[inner]))
    assert err.max() < 1e-12
    assert np.all((x[finite] >= a) & (x[finite] <= b))
    # Monotone in u, as an inverse CDF must be.
    order = np.argsort(u)
    assert np.all(np.diff(x[order][np.isfinite(x[order])]) >= 0.0)


# ----------------------------------------------------------------------------- issue 14: bounds

# Bounds of the two trial populations, as cited in their files: the seed trials' inclusion
# criteria where they have one (NCT04964219: 18-80 y; both fibromyalgia trials: > 18 y), WHO's
# "valid extreme limit" BMI 16 kg/m^2, and the oldest age with (es)ketamine PK data in the
# library (Perez-Ruixo 2021: 86 y) as the fibromyalgia upper age.
BOUNDS = {
    "spine_fusion_china": {"age": (18, 80), "bmi": (16, None)},
    "fibromyalgia_outpatients": {"age": (18, 86), "bmi": (16, None)},
}
N_BIG = 1_000_000


@pytest.fixture(scope="module", params=sorted(BOUNDS))
def bounded(request):
    pop = load_population(request.param)
    return request.param, pop, pop.sample(np.random.default_rng(14), N_BIG)


def test_trial_populations_cite_their_bounds(bounded):
    name, pop, _ = bounded
    lo, hi = BOUNDS[name]["age"]
    assert (pop.age.low.value, pop.age.high.value) == (lo, hi)
    assert "NCT" in pop.age.low.source
    for sex in SEXES:
        assert pop.bmi[sex].low.value == 16 and pop.bmi[sex].high is None
        assert "valid extreme limit" in pop.bmi[sex].low.source
    if name == "spine_fusion_china":
        # the surgical cohort's own dispersion (Dong 2022 Table 1), not the general population's
        assert pop.bmi["female"] is pop.bmi["male"]
        assert pop.bmi["female"].moments() == pytest.approx((24.4, 2.3), rel=1e-9)
    else:
        assert pop.age.high.tag == "assumed" and pop.age.high.note


def test_a_million_draws_respect_the_bounds(bounded):
    name, _, x = bounded
    lo, hi = BOUNDS[name]["age"]
    assert lo <= x["age"].min() and x["age"].max() <= hi
    assert x["bmi"].min() >= 16
    # weight is BMI x height^2: bounded below through the BMI floor and the shortest height
    assert np.all(x["weight"] >= 16 * (x["height"] / 100) ** 2 * (1 - 1e-12))
    # the tails that issue 14 reported (ages to 108, BMI 11.5, weights 27 kg) are gone
    assert x["age"].max() < 100 and x["bmi"].min() > 11.5
    if name == "spine_fusion_china":
        assert x["weight"].min() > 27


def test_marginals_are_the_truncated_distributions(bounded):
    """Sample means against scipy.stats.truncnorm's, and the whole shape by KS (fixed seed)."""
    _, pop, x = bounded
    a = pop.age
    ta = stats.truncnorm(*a.standardized(), loc=a.loc, scale=a.scale)
    _within(x["age"], ta.mean(), ta.std())
    # the reported (already selected) sample moments are reproduced after truncation
    assert (ta.mean(), ta.std()) == pytest.approx((a.mean.value, a.sd.value), rel=1e-8)
    assert stats.kstest(x["age"][:50_000], ta.cdf).pvalue > 1e-3
    f = x["sex"] == "female"
    for sex, mask in (("female", f), ("male", ~f)):
        b = pop.bmi[sex]
        tb = stats.truncnorm(*b.standardized(), loc=b.mu, scale=b.sigma)
        logb = np.log(x["bmi"][mask])
        _within(logb, tb.mean(), tb.std())
        assert stats.kstest(logb[:50_000], tb.cdf).pvalue > 1e-3
        # natural-scale moments: closed form == numerical integration == file's numbers
        m, s = b.moments()
        assert m == pytest.approx(tb.expect(np.exp), rel=1e-9)
        assert (m, s) == pytest.approx((b.mean.value, b.sd.value), rel=1e-8)


def test_truncation_is_exact_not_clipped(bounded):
    _, pop, x = bounded
    # no pile-up on a bound (clipping would put mass exactly there)
    assert np.mean(x["age"] == pop.age.low.value) == 0
    assert np.mean(x["age"] == pop.age.high.value) == 0
    assert np.mean(x["bmi"] == 16.0) == 0


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_truncated_cohort_covariates_do_not_depend_on_the_chunk_size(name):
    """Same seed, same patients, whatever the chunking (blocks of 1024 drawn whole)."""

    def run(chunk_size):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CovariateRangeWarning)
            return simulate_cohort(
                "fanta2015_otto2021",
                "0.5 mg/kg bolus at 0 h",
                name,
                n=2500,
                seed=14,
                until="1 h",
                every="30 min",
                bands=False,
                chunk_size=chunk_size,
            )

    ref = run(8192)
    for chunk in (1024, 3072):
        ds = run(chunk)
        for k in ("sex", "age", "weight", "height", "bmi", "cmax", "param_CL"):
            np.testing.assert_array_equal(ref[k].values, ds[k].values, err_msg=k)
    lo, hi = BOUNDS[name]["age"]
    assert ref.sizes["patient"] == 2500
    assert lo <= float(ref["age"].min()) and float(ref["age"].max()) <= hi
    assert float(ref["bmi"].min()) >= 16
