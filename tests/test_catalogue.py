"""The catalogue commands (`pkpd models|populations|regimens|pd|risk [list|show NAME]`) and
"did you mean" for every misspelled shipped name, in the loaders (API) and the command."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from pkpd.cli import main
from pkpd.errors import ModelError, PkpdError, RegimenError, RiskError
from pkpd.inputs.model import load_model
from pkpd.inputs.pd import load_pd
from pkpd.inputs.population import PopulationError, load_population
from pkpd.inputs.regimen import Regimen, load_regimen
from pkpd.inputs.risk_model import load_risk

MODELS = Path(__file__).resolve().parents[1] / "models"
#: command group -> folder of its shipped files
FOLDERS = {
    "models": MODELS,
    "populations": MODELS / "populations",
    "regimens": MODELS / "regimens",
    "pd": MODELS / "pd",
    "risk": MODELS / "risk",
}


def shipped(kind: str) -> list[str]:
    """The shipped names of a kind, from the directory listing itself."""
    return sorted(p.stem for p in FOLDERS[kind].glob("*.toml"))


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def table_names(output: str) -> list[str]:
    """First column of a catalogue table: the lines between the header and the blank line
    before the hint."""
    lines = output.splitlines()
    body = lines[1 : lines.index("")]
    return [line.split()[0] for line in body]


@pytest.mark.parametrize("kind", ["regimens", "pd", "risk"])
def test_list_has_one_row_per_shipped_file(kind):
    r = invoke(kind, "list")
    assert r.exit_code == 0, r.output
    assert table_names(r.output) == shipped(kind)
    # `pkpd KIND` alone lists the same, as `pkpd models` does.
    assert invoke(kind).output == r.output


@pytest.mark.parametrize("kind", ["models", "populations"])
def test_models_and_populations_list_every_shipped_file(kind):
    r = invoke(kind, "list")
    assert r.exit_code == 0, r.output
    first = {line.split()[0] for line in r.output.splitlines() if line.strip()}
    assert set(shipped(kind)) <= first
    assert invoke(kind).output == r.output


@pytest.mark.parametrize(
    "kind,name", [(k, n) for k in FOLDERS for n in shipped(k)], ids=lambda x: str(x)
)
def test_show_every_shipped_file(kind, name):
    r = invoke(kind, "show", name)
    assert r.exit_code == 0, r.output
    assert name in r.output.splitlines()[0] or kind == "populations"
    assert name in r.output


def test_regimen_list_names_the_drug_of_each_file():
    rows = {line.split()[0]: line for line in invoke("regimens").output.splitlines()[1:] if line}
    for name in shipped("regimens"):
        with open(FOLDERS["regimens"] / f"{name}.toml", "rb") as fh:
            drug = tomllib.load(fh)["regimen"]["drug"]
        assert f"  {drug}  " in rows[name]


@pytest.mark.parametrize("name", shipped("regimens"))
def test_regimen_show_one_line_form_gives_the_same_doses(name):
    lines = invoke("regimens", "show", name).output.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("doses (one-line form"))
    text = lines[i + 1].strip()
    assert Regimen.parse(text).doses == load_regimen(name).doses
    reg = load_regimen(name)
    for event in reg.anchor_names:
        assert any(line.startswith(f"  {event}: ") for line in lines)
    assert f"  source: {reg.source}" in lines


def test_regimen_show_anchor_distribution():
    out = invoke("regimens", "show", "lumbar_fusion_esketamine").output
    # [anchors.end_of_surgery]: lognormal, median 4 h, gsd 1.3, range 1.5-10 h, default 4 h.
    assert (
        "end_of_surgery: log-normal, median 4 h, geometric SD 1.3, within 1.5 h-10 h across "
        "a cohort; 4 h for one patient [illustrative]"
    ) in out


def test_risk_list_shows_metric_domain_and_tags_from_the_file():
    with open(FOLDERS["risk"] / "psychotomimetic.toml", "rb") as fh:
        data = tomllib.load(fh)
    row = next(
        line for line in invoke("risk").output.splitlines() if line.startswith("psychotomimetic")
    )
    e = data["exposure"]
    assert f"{e['metric']} {e['output']} ({e['unit']}) from {e['awake_from']}" in row
    lo, hi = data["fit"]["exposure_range_ng_ml"]
    assert f"PK {data['risk']['pk_model']}, {e['metric']} {lo:.3g}-{hi:.3g} ng/mL" in row
    tags = [e["tag"], data["model"]["background"]["tag"]]
    for arm in data["calibration"]:
        tags.append(arm["tag"])
        if "emergence" in arm:
            tags.append(arm["emergence"]["tag"])
    for tag in set(tags):
        assert f"{tags.count(tag)} {tag}" in row


def _misspell(name: str) -> str:
    return name[:-2] + name[-1]  # one character dropped


@pytest.mark.parametrize("kind", list(FOLDERS))
def test_misspelled_name_suggests_the_shipped_one(kind):
    name = shipped(kind)[-1]
    r = invoke(kind, "show", _misspell(name))
    assert r.exit_code == 2
    assert f"did you mean '{name}'?" in r.output
    assert r.output.startswith("pkpd: error: ") and r.output.count("\n") == 1


@pytest.mark.parametrize(
    "load,name,error",
    [
        (load_model, "fanta2015_oto2021", ModelError),
        (load_population, "healthy_volunters", PopulationError),
        (load_regimen, "lumbar_fusion_esketamin", RegimenError),
        (load_pd, "simons2022_drughigh", ModelError),
        (load_risk, "psychotomimetc", RiskError),
    ],
)
def test_loaders_suggest_the_closest_name(load, name, error):
    with pytest.raises(error, match=r"did you mean '[a-z0-9_]+'\?") as ei:
        load(name)
    assert isinstance(ei.value, PkpdError)


def test_suggestion_ignores_case_and_is_absent_for_unrelated_names():
    with pytest.raises(ModelError, match=r"did you mean 'fanta2015_otto2021'\?"):
        load_model("Fanta2015_Otto2021")
    with pytest.raises(ModelError) as ei:
        load_model("zzz")
    assert "did you mean" not in str(ei.value)
    # A simulate argument goes through the same loader.
    r = invoke("simulate", "fanta2015_otto2021", "lumbar_fusion_esketamin")
    assert r.exit_code == 2 and "did you mean 'lumbar_fusion_esketamine'?" in r.output


def test_regimen_drug_must_name_the_drug():
    data = {"regimen": {"drug": "morphine"}, "bolus": [{"amount": "1 mg", "at": "0 h"}]}
    with pytest.raises(RegimenError, match=r"regimen\.drug.*'morphine'.*racemic ketamine"):
        Regimen.from_dict(data, file="x.toml")
    data["regimen"]["drug"] = "S-ketamine"
    assert Regimen.from_dict(data).doses == Regimen.parse("1 mg bolus at 0 h").doses
