"""Tests of ``pkpd.units``: conversions to internal units and every error path.

Expected values are computed by hand from the unit definitions (1 min = 1/60 h,
1 ug = 1e-3 mg, 1 mL = 1e-3 L, 1 nmol of a drug of molar mass M g/mol = M ng, ...).
Where the floating-point result of the conversion is not exactly representable the
comparison uses ``rel=1e-15`` (a few ulps).
"""

from __future__ import annotations

import math
import re

import pytest

from pkpd.errors import PkpdError, UnitError
from pkpd.inputs.units import KINDS, Parsed, format_quantity, parse_quantity, to_internal

KETAMINE_MM = 237.73  # g/mol


def _approx(x):
    return pytest.approx(x, rel=1e-15, abs=0.0)


# ----------------------------------------------------------------------------- values

# (text, kind, kwargs, expected value in internal units, expected per_kg)
CONVERSIONS = [
    # rates (internal mg/h)
    ("5 ug/kg/min", "rate", {"allow_per_kg": True}, 0.3, True),
    ("1 mcg/kg/min", "rate", {"allow_per_kg": True}, 0.06, True),
    ("0.2 mg/kg/h", "rate", {"allow_per_kg": True}, 0.2, True),
    ("10 mg/h", "rate", {}, 10.0, False),
    ("10 mg/h", "rate", {"allow_per_kg": True}, 10.0, False),
    ("1 mg/min", "rate", {}, 60.0, False),
    ("24 mg/day", "rate", {}, 1.0, False),
    # times (internal h)
    ("90 min", "time", {}, 1.5, False),
    ("4 h", "time", {}, 4.0, False),
    ("2 day", "time", {}, 48.0, False),
    ("2 days", "time", {}, 48.0, False),
    ("2 hrs", "time", {}, 2.0, False),
    ("30 mins", "time", {}, 0.5, False),
    ("3600 s", "time", {}, 1.0, False),
    (".5 h", "time", {}, 0.5, False),
    ("1.5e1 min", "time", {}, 0.25, False),
    ("+90 min", "time", {}, 1.5, False),
    # amounts (internal mg), the three spellings of microgram
    ("20 mg", "amount", {}, 20.0, False),
    ("5 ug", "amount", {}, 0.005, False),
    ("5 mcg", "amount", {}, 0.005, False),
    ("5 \u00b5g", "amount", {}, 0.005, False),  # MICRO SIGN
    ("5 \u03bcg", "amount", {}, 0.005, False),  # GREEK SMALL LETTER MU
    ("5 microgram", "amount", {}, 0.005, False),
    ("1e-3 g", "amount", {}, 1.0, False),
    ("0.3 mg/kg", "amount", {"allow_per_kg": True}, 0.3, True),
    ("300 ug/kg", "amount", {"allow_per_kg": True}, 0.3, True),
    # concentrations (internal mg/L)
    ("100 ng/mL", "concentration", {}, 0.1, False),
    ("1 ug/mL", "concentration", {}, 1.0, False),
    ("1 mg/L", "concentration", {}, 1.0, False),
    # volumes (internal L)
    ("133 L", "volume", {}, 133.0, False),
    ("250 mL", "volume", {}, 0.25, False),
    ("0.063 L/kg", "volume", {"allow_per_kg": True}, 0.063, True),
    ("500 mL/kg", "volume", {"allow_per_kg": True}, 0.5, True),
    # clearances (internal L/h)
    ("95.2 L/h", "clearance", {}, 95.2, False),
    ("1.48 L/min", "clearance", {}, 88.8, False),
    ("15 mL/kg/min", "clearance", {"allow_per_kg": True}, 0.9, True),
    ("1.5 L/h/kg", "clearance", {"allow_per_kg": True}, 1.5, True),
    # rate constants (internal 1/h)
    ("0.438 1/min", "rate_constant", {}, 26.28, False),
    ("2.77 1/h", "rate_constant", {}, 2.77, False),
    ("1 1/day", "rate_constant", {}, 1.0 / 24.0, False),
    # molar forms with the molar mass of ketamine
    ("1 nmol/mL", "concentration", {"molar_mass": KETAMINE_MM}, 0.23773, False),
    ("0.4 nmol/mL", "concentration", {"molar_mass": KETAMINE_MM}, 0.4 * 0.23773, False),
    ("1 umol", "amount", {"molar_mass": KETAMINE_MM}, 0.23773, False),
    ("1 mmol", "amount", {"molar_mass": KETAMINE_MM}, 237.73, False),
    ("1 umol/kg", "amount", {"molar_mass": KETAMINE_MM, "allow_per_kg": True}, 0.23773, True),
    ("1 umol/h", "rate", {"molar_mass": KETAMINE_MM}, 0.23773, False),
    # other kinds
    ("237.73 g/mol", "molar_mass", {}, 237.73, False),
    ("70 kg", "weight", {}, 70.0, False),
    ("70000 g", "weight", {}, 70.0, False),
    ("175 cm", "height", {}, 175.0, False),
    ("1.75 m", "height", {}, 175.0, False),
    ("45 year", "age", {}, 45.0, False),
    ("540 month", "age", {}, 45.0, False),
    ("3", "dimensionless", {}, 3.0, False),
    ("10 %", "dimensionless", {}, 0.1, False),
    ("10 percent", "dimensionless", {}, 0.1, False),
]


@pytest.mark.parametrize(
    ("text", "kind", "kwargs", "expected", "per_kg"),
    CONVERSIONS,
    ids=[f"{c[0]}->{c[1]}" for c in CONVERSIONS],
)
def test_conversion(text, kind, kwargs, expected, per_kg):
    p = parse_quantity(text, kind, **kwargs)
    assert isinstance(p, Parsed)
    assert p.value == _approx(expected)
    assert p.per_kg is per_kg
    assert p.kind == kind
    assert p.text == text


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("90 min", "time", 1.5),  # 90/60
        ("2 day", "time", 48.0),
        ("5 ug/kg/min", "rate", 0.3),  # 5e-3 * 60
        ("100 ng/mL", "concentration", 0.1),
        ("20 mg", "amount", 20.0),
    ],
)
def test_conversion_exact(text, kind, expected):
    """Conversions whose exact result is the nearest double of the hand value."""
    assert parse_quantity(text, kind, allow_per_kg=True).value == expected


def test_docstring_examples():
    assert parse_quantity("5 ug/kg/min", "rate", allow_per_kg=True) == Parsed(
        0.3, True, "rate", "5 ug/kg/min"
    )
    assert parse_quantity("90 min", "time").value == 1.5


def test_spellings_of_microgram_agree():
    values = {parse_quantity(f"7 {u}/kg/min", "rate", allow_per_kg=True).value
              for u in ("ug", "mcg", "\u00b5g", "\u03bcg", "microgram")}  # fmt: skip
    assert len(values) == 1
    assert values.pop() == _approx(7e-3 * 60)


def test_molar_conversion_scales_with_molar_mass():
    a = parse_quantity("1 nmol/mL", "concentration", molar_mass=100.0).value
    b = parse_quantity("1 nmol/mL", "concentration", molar_mass=200.0).value
    assert a == _approx(0.1)
    assert b == _approx(0.2)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("0.3 mg/kg", "amount"),
        ("5 ug/kg/min", "rate"),
        ("0.063 L/kg", "volume"),
        ("15 mL/kg/min", "clearance"),
    ],
)
def test_per_kg_detected(text, kind):
    p = parse_quantity(text, kind, allow_per_kg=True)
    assert p.per_kg is True
    # Parsed.scaled multiplies by the weight only for per-kg values.
    assert p.scaled(70.0) == _approx(p.value * 70.0)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("20 mg", "amount"),
        ("10 mg/h", "rate"),
        ("133 L", "volume"),
        ("95.2 L/h", "clearance"),
    ],
)
def test_absolute_not_per_kg(text, kind):
    p = parse_quantity(text, kind, allow_per_kg=True)
    assert p.per_kg is False
    assert p.scaled(70.0) == p.value


def test_scaled_exact_values():
    assert parse_quantity("0.3 mg/kg", "amount", allow_per_kg=True).scaled(70) == _approx(21.0)
    assert parse_quantity("5 ug/kg/min", "rate", allow_per_kg=True).scaled(80) == _approx(24.0)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("0.3 mg/kg", "amount"),
        ("5 ug/kg/min", "rate"),
        ("0.063 L/kg", "volume"),
        ("15 mL/kg/min", "clearance"),
    ],
)
def test_per_kg_refused_when_not_allowed(text, kind):
    with pytest.raises(UnitError, match=re.escape(repr(text))):
        parse_quantity(text, kind, allow_per_kg=False)


def test_per_kg_refusal_message_says_per_kg():
    with pytest.raises(UnitError, match=r"(?i)per[ -]kg|per kilogram"):
        parse_quantity("0.3 mg/kg", "amount", allow_per_kg=False)


# ----------------------------------------------------------------------------- bare numbers


def test_bare_number_with_default_unit():
    assert parse_quantity(70, "weight", default_unit="kg").value == 70.0
    assert parse_quantity(70.5, "weight", default_unit="kg").value == 70.5
    assert parse_quantity("70", "weight", default_unit="kg").value == 70.0
    assert parse_quantity(45, "age", default_unit="year").value == 45.0
    assert parse_quantity(90, "time", default_unit="min").value == 1.5


def test_bare_number_dimensionless():
    assert parse_quantity(0.5, "dimensionless").value == 0.5
    assert parse_quantity("1", "dimensionless").value == 1.0


def test_explicit_unit_overrides_default_unit():
    assert parse_quantity("70000 g", "weight", default_unit="kg").value == _approx(70.0)


# ----------------------------------------------------------------------------- to_internal


def test_to_internal_value():
    assert to_internal("90 min", "time") == 1.5
    assert to_internal("1.48 L/min", "clearance") == _approx(88.8)


def test_to_internal_refuses_per_kg():
    with pytest.raises(UnitError, match=r"'0\.3 mg/kg' is per kg"):
        to_internal("0.3 mg/kg", "amount", allow_per_kg=True)


def test_to_internal_error_names_location():
    with pytest.raises(UnitError, match=r"f\.toml: `a\.b`: '0\.3 mg/kg' is per kg"):
        to_internal("0.3 mg/kg", "amount", allow_per_kg=True, file="f.toml", key="a.b")


# ----------------------------------------------------------------------------- errors

# (value, kind, kwargs, regex the message must match: it names the offending text)
ERRORS = [
    # unknown unit
    ("5 blorbs", "amount", {}, r"unknown unit 'blorbs' in '5 blorbs'"),
    ("5 blorbs/h", "rate", {"allow_per_kg": True}, r"unknown unit 'blorbs/h' in '5 blorbs/h'"),
    ("5 mg mg/", "amount", {}, r"unknown unit 'mg mg/' in '5 mg mg/'"),
    ("90 minnn", "time", {}, r"unknown unit 'minnn' in '90 minnn'"),
    # wrong dimension
    ("5 L", "amount", {}, r"'5 L' has dimension \[length\] \*\* 3, expected a drug amount"),
    ("10 mg", "rate", {}, r"'10 mg' has dimension \[mass\], expected an infusion rate"),
    ("20 mg/h", "amount", {}, r"'20 mg/h' has dimension .*expected a drug amount"),
    ("4 h", "amount", {}, r"'4 h' has dimension \[time\], expected a drug amount"),
    ("5 mg", "time", {}, r"'5 mg' has dimension \[mass\], expected a time"),
    ("95.2 L", "clearance", {}, r"'95\.2 L' has dimension .*expected a clearance"),
    ("133 L/h", "volume", {}, r"'133 L/h' has dimension .*expected a volume"),
    ("0.438 1/mg", "rate_constant", {}, r"'0\.438 1/mg' has dimension .*expected a rate const"),
    ("100 ng", "concentration", {}, r"'100 ng' has dimension .*expected a concentration"),
    ("237.73 g", "molar_mass", {}, r"'237\.73 g' has dimension .*expected a molar mass"),
    ("70 L", "weight", {}, r"'70 L' has dimension .*expected a body weight"),
    ("5 mg", "dimensionless", {}, r"'5 mg' has dimension .*expected a plain number"),
    (
        "1 nmol/mL/min",
        "rate",
        {"molar_mass": KETAMINE_MM},
        r"'1 nmol/mL/min' has dimension .*expected an infusion rate",
    ),
    ("0.3 mg/kg/kg", "amount", {"allow_per_kg": True}, r"'0\.3 mg/kg/kg' has dimension"),
    # unparsable text
    ("abc", "amount", {}, r"cannot read 'abc' as a quantity: expected a drug amount"),
    ("mg 5", "amount", {}, r"cannot read 'mg 5' as a quantity"),
    ("", "amount", {}, r"cannot read '' as a quantity"),
    ("   ", "time", {}, r"cannot read '   ' as a quantity"),
    ("five mg", "amount", {}, r"cannot read 'five mg' as a quantity"),
    ("1,5 mg", "amount", {}, r"1,5 mg"),
    # non-finite: the number regex does not accept 'inf'/'nan', so they are unreadable
    ("inf mg", "amount", {}, r"cannot read 'inf mg' as a quantity"),
    ("nan mg", "amount", {}, r"cannot read 'nan mg' as a quantity"),
    ("-inf mg", "amount", {}, r"cannot read '-inf mg' as a quantity"),
    (math.inf, "amount", {"default_unit": "mg"}, r"cannot read 'inf' as a quantity"),
    (math.nan, "amount", {"default_unit": "mg"}, r"cannot read 'nan' as a quantity"),
    # ... while an overflowing literal is read and refused as non-finite
    ("1e999 mg", "amount", {}, r"'1e999 mg' is not a finite number: expected a drug amount"),
    ("-1e999 h", "time", {}, r"'-1e999 h' is not a finite number: expected a time"),
    # missing unit
    ("5", "amount", {}, r"'5' has no unit: expected a drug amount"),
    (5, "amount", {}, r"'5\.0' has no unit: expected a drug amount"),
    (90.0, "time", {}, r"'90\.0' has no unit: expected a time"),
    # bool and other types
    (True, "amount", {}, r"expected a drug amount such as .*, got True"),
    (False, "weight", {"default_unit": "kg"}, r"expected a body weight .*, got False"),
    (None, "time", {}, r"expected a time such as .*, got None"),
    ([1, "mg"], "amount", {}, r"got \[1, 'mg'\]"),
    ({"value": 5}, "amount", {}, r"got \{'value': 5\}"),
    # molar without molar mass
    ("1 nmol/mL", "concentration", {}, r"'1 nmol/mL' is a molar quantity.*molar mass"),
    ("1 umol", "amount", {}, r"'1 umol' is a molar quantity; converting it to mg needs"),
    ("1 umol/kg", "amount", {"allow_per_kg": True}, r"'1 umol/kg' is a molar quantity"),
    ("1 umol/h", "rate", {}, r"'1 umol/h' is a molar quantity; converting it to mg/h"),
]


@pytest.mark.parametrize(
    ("value", "kind", "kwargs", "pattern"),
    ERRORS,
    ids=[f"{e[0]!r}->{e[1]}" for e in ERRORS],
)
def test_parse_error(value, kind, kwargs, pattern):
    with pytest.raises(UnitError, match=pattern) as ei:
        parse_quantity(value, kind, **kwargs)
    assert isinstance(ei.value, ValueError)
    assert isinstance(ei.value, PkpdError)


@pytest.mark.parametrize(
    ("value", "kind", "kwargs"),
    [e[:3] for e in ERRORS],
    ids=[f"{e[0]!r}->{e[1]}" for e in ERRORS],
)
def test_parse_error_names_location(value, kind, kwargs):
    """With file and key, every message starts with the location."""
    with pytest.raises(UnitError, match=r"^model\.toml: `parameters\.X\.value`: "):
        parse_quantity(value, kind, file="model.toml", key="parameters.X.value", **kwargs)


def test_error_caught_as_value_error():
    with pytest.raises(ValueError, match="blorbs"):
        parse_quantity("5 blorbs", "amount")


def test_unknown_kind_is_programming_error():
    with pytest.raises(ValueError, match="unknown quantity kind 'speed'") as ei:
        parse_quantity("5 m/s", "speed")
    assert not isinstance(ei.value, UnitError)


def test_molar_quantity_in_wrong_kind_is_a_dimension_error():
    # Molar conversion applies to amounts, rates and concentrations only.
    with pytest.raises(UnitError, match=r"'1 umol' has dimension \[substance\]"):
        parse_quantity("1 umol", "volume", molar_mass=KETAMINE_MM)


def test_every_kind_has_internal_unit_and_description():
    for kind, (unit, desc) in KINDS.items():
        assert isinstance(unit, str)
        assert desc, kind
    assert KINDS["time"][0] == "h"
    assert KINDS["amount"][0] == "mg"
    assert KINDS["rate"][0] == "mg/h"


def test_format_quantity():
    assert format_quantity(88.8, "L/h") == "88.8 L/h"
    assert format_quantity(0.23773, "mg/L", digits=3) == "0.238 mg/L"
    assert format_quantity(3.0, "") == "3"


def test_amounts_below_one_mg_are_written_in_ug():
    from pkpd.inputs.units import amount_text

    assert amount_text(0.0975) == "97.5 ug"
    assert amount_text(35.0) == "35 mg"
    assert amount_text(0.0) == "0 mg"
    assert amount_text(1.5, unit_of=0.2) == "1500 ug"
