"""Repeated boluses: '<amount> bolus every <interval> from <time> (to <time> | for <span> |
times <n>) [over <duration>]' and ``[[bolus]]`` with ``every`` (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest

from pkpd.errors import RegimenError
from pkpd.inputs.regimen import Bolus, Regimen, load_regimen
from pkpd.running.cohort import simulate_cohort

pytestmark = pytest.mark.filterwarnings("ignore::pkpd.errors.CovariateRangeWarning")

SERIES = "0.02 mg/kg bolus every 2 h from end_of_surgery for 8 h"
LIST = "; ".join(
    f"0.02 mg/kg bolus at end_of_surgery + {t} h" if t else "0.02 mg/kg bolus at end_of_surgery"
    for t in (0, 2, 4, 6)
)


def test_series_equals_explicit_boluses():
    r = Regimen.parse(SERIES)
    assert r.doses == Regimen.parse(LIST).doses  # end exclusive: no bolus at +8 h
    assert all(isinstance(d, Bolus) for d in r.doses)
    assert (
        Regimen.parse("1 mg bolus every 2 h from 0 h to 8 h").doses
        == Regimen.parse("1 mg bolus every 2 h from 0 h times 4").doses
    )
    # An end that is not on the grid: the last bolus is the last one before it.
    assert [d.at for d in Regimen.parse("1 mg bolus every 2 h from 1 h to 8.5 h").doses] == [
        1.0, 3.0, 5.0, 7.0
    ]  # fmt: skip
    # Interval longer than the span: one bolus.
    assert len(Regimen.parse("1 mg bolus every 24 h from 0 h for 6 h").doses) == 1
    over = Regimen.parse("1 mg bolus every 1 h from 0 h times 2 over 1 min").doses
    assert [d.duration for d in over] == [1 / 60] * 2


def test_series_errors():
    for text, match in [
        ("1 mg bolus every 0 h from 0 h for 4 h", "positive"),
        ("1 mg bolus every -1 h from 0 h for 4 h", "positive"),
        ("1 mg bolus every 1 h from 4 h to 2 h", "not after its start"),
        ("1 mg bolus every 1 h from 0 h times 0", ">= 1"),
        ("1 mg bolus every 1 h from 0 h times 2.5", "whole number"),
        ("1 mg bolus every 1 h from end_of_surgery to 48 h", "different number of boluses"),
    ]:
        with pytest.raises(RegimenError, match=match):
            Regimen.parse(text)


def test_text_round_trip():
    doc = {
        "anchors": {"end_of_surgery": {"default": "3 h"}},
        "bolus": [
            {"amount": "0.02 mg/kg", "at": "end_of_surgery + 1 h", "every": "20 min",
             "for": "2 h"},
            {"amount": "1 mg", "at": "0 h", "every": "2 h", "until": "5 h", "duration": "1 min"},
            {"amount": "1 mg", "at": "0 h", "every": "1 h", "count": 3},
        ],
    }  # fmt: skip
    r = Regimen.from_dict(doc)
    assert len(r.doses) == 6 + 3 + 3
    assert "bolus every" in r.text
    back = Regimen.parse(r.text)
    assert back.doses == r.doses
    assert Regimen.parse(back.text).doses == r.doses
    with pytest.raises(RegimenError, match="every"):
        Regimen.from_dict({"bolus": [{"amount": "1 mg", "at": "0 h", "count": 3}]})
    with pytest.raises(RegimenError, match="exactly one"):
        Regimen.from_dict(
            {"bolus": [{"amount": "1 mg", "at": "0 h", "every": "1 h", "count": 3, "for": "2 h"}]}
        )


def test_cohort_series_bit_for_bit_and_superposition():
    anchors = "lumbar_fusion_esketamine"  # drawn end_of_surgery per patient
    src = load_regimen(anchors)
    kw = {"until": "20 h", "every": "15 min", "progress": False, "bands": False}

    def run(text):
        reg = Regimen(Regimen.parse(text).doses, anchors=src.anchors, _text=text)
        return simulate_cohort("fanta2015_otto2021", reg, "spine_fusion_china", 40, 4, **kw)

    a, b = run(SERIES), run(LIST)
    assert np.ptp(a.end_of_surgery.values) > 0
    for v in ("cmax", "auc", "dose_given"):
        if v in a:
            np.testing.assert_array_equal(a[v].values, b[v].values)
    # Superposition (linear model): 4 boluses = sum of 4 single-bolus cohorts' AUC over 0-20 h.
    singles = [run(f"0.02 mg/kg bolus at end_of_surgery + {t} h") for t in (0, 2, 4, 6)]
    total = sum(s.auc.values for s in singles)
    np.testing.assert_allclose(a.auc.values, total, rtol=1e-9)
