"""Units at the boundary: parse ``"0.3 mg/kg"``, ``"5 ug/kg/min"``, ``"90 min"`` once.

Inside the package every number is in the internal system chosen in DESIGN.md:

========================  ==========
quantity                  unit
========================  ==========
time                      h
amount (drug mass)        mg
volume                    L
concentration             mg/L  (reported to users as ng/mL)
rate (infusion)           mg/h
clearance                 L/h
pump volume rate          L/h
rate constant             1/h
body weight               kg
========================  ==========

Parsing uses `pint <https://pint.readthedocs.io>`_ so that every SI prefix and the usual
spellings (``ug``, ``µg``, ``mcg``, ``mL``, ``min``, ``h``, ``day``) are understood, and the
dimension is checked before conversion. Doses and rates may be given *per kilogram of body
weight* (``mg/kg``, ``ug/kg/min``, ``L/kg``): the parser recognises a quantity whose
dimension is the expected one divided by a mass, and returns it as a per-kg value in
internal units together with ``per_kg=True``; the caller multiplies by the patient's weight.
Molar quantities (``nmol/mL``, ``umol``) are converted with the drug's molar mass in g/mol,
which the caller must supply.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from pkpd.errors import UnitError, where

__all__ = [
    "KINDS",
    "MG_L_TO_NG_ML",
    "Parsed",
    "amount_text",
    "format_quantity",
    "parse_quantity",
    "range_bounds",
    "to_internal",
]

MG_L_TO_NG_ML = 1000.0  # 1 mg/L = 1 ug/mL = 1000 ng/mL: internal concentrations as reported

# kind -> (internal unit, human description with examples for error messages)
KINDS: dict[str, tuple[str, str]] = {
    "amount": ("mg", "a drug amount such as '20 mg' or '0.3 mg/kg'"),
    "rate": ("mg/h", "an infusion rate such as '10 mg/h', '0.2 mg/kg/h' or '5 ug/kg/min'"),
    "time": ("h", "a time such as '90 min', '4 h' or '2 day'"),
    "volume": ("L", "a volume such as '133 L' or '0.063 L/kg'"),
    "concentration": ("mg/L", "a concentration such as '100 ng/mL' or '0.4 nmol/mL'"),
    "clearance": ("L/h", "a clearance such as '95.2 L/h' or '1.48 L/min'"),
    "volume_rate": ("L/h", "a pump's volume rate such as '1 mL/h'"),
    "rate_constant": ("1/h", "a rate constant such as '0.438 1/min' or '2.77 1/h'"),
    "molar_mass": ("g/mol", "a molar mass such as '237.73 g/mol'"),
    "weight": ("kg", "a body weight such as '70 kg'"),
    "height": ("cm", "a height such as '175 cm'"),
    "age": ("year", "an age such as '45 year' (or a bare number of years)"),
    "dimensionless": ("", "a plain number"),
}

_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")


@functools.lru_cache(maxsize=1)
def _registry():
    import pint

    ureg = pint.UnitRegistry(autoconvert_offset_to_baseunit=False)
    # Spellings common in anaesthesia charts that pint does not know by default.
    for line in ("mcg = microgram", "hrs = hour", "mins = minute", "days = day"):
        try:
            ureg.define(line)
        except Exception:  # already defined in this pint version
            pass
    return ureg


@dataclass(frozen=True)
class Parsed:
    """A parsed quantity in internal units.

    Attributes
    ----------
    value : float
        Magnitude in the internal unit of its kind (per kg of body weight if `per_kg`).
    per_kg : bool
        True when the text was given per kilogram of body weight (``mg/kg``, ``L/kg``).
    kind : str
        One of :data:`KINDS`.
    text : str
        The original text, kept for messages and provenance.
    """

    value: float
    per_kg: bool
    kind: str
    text: str

    def scaled(self, weight_kg: float) -> float:
        """Value in internal units for a patient of `weight_kg` (no-op if not per kg)."""
        return self.value * weight_kg if self.per_kg else self.value


def _dims(ureg, unit_text: str):
    return ureg.parse_units(unit_text).dimensionality


def parse_quantity(
    text: object,
    kind: str,
    *,
    allow_per_kg: bool = False,
    molar_mass: float | None = None,
    default_unit: str | None = None,
    file: object | None = None,
    key: str | None = None,
) -> Parsed:
    """Parse ``"<number> <unit>"`` into internal units, checking the dimension.

    Parameters
    ----------
    text : str or number
        The quantity. A bare number is accepted only when `default_unit` is given (or the
        kind is dimensionless).
    kind : str
        Expected kind, a key of :data:`KINDS`.
    allow_per_kg : bool
        Accept the expected dimension divided by a body mass (``mg/kg``).
    molar_mass : float, optional
        Molar mass in g/mol, needed to convert molar amounts or concentrations.
    default_unit : str, optional
        Unit assumed for a bare number (e.g. ``"kg"`` for a weight given as ``70``).
    file, key : optional
        Location for error messages.

    Returns
    -------
    Parsed

    Raises
    ------
    UnitError
        Unknown unit, wrong dimension, unparsable text, non-finite number, or a molar
        quantity without a molar mass.

    Examples
    --------
    >>> parse_quantity("5 ug/kg/min", "rate", allow_per_kg=True)
    Parsed(value=0.3, per_kg=True, kind='rate', text='5 ug/kg/min')
    >>> parse_quantity("90 min", "time").value
    1.5
    """
    if kind not in KINDS:
        raise ValueError(f"unknown quantity kind {kind!r}")
    target, expected = KINDS[kind]
    loc = where(file, key)
    original = text
    if isinstance(text, bool):
        raise UnitError(f"{loc}expected {expected}, got {text!r}")
    if isinstance(text, int | float):
        text = repr(float(text))
    if not isinstance(text, str):
        raise UnitError(f"{loc}expected {expected}, got {original!r}")
    m = _NUMBER.match(text)
    if not m:
        raise UnitError(f"{loc}cannot read {text!r} as a quantity: expected {expected}")
    number = float(m.group(1))
    unit_text = m.group(2).strip()
    if not math.isfinite(number):
        raise UnitError(f"{loc}{text!r} is not a finite number: expected {expected}")
    if not unit_text:
        if kind == "dimensionless":
            return Parsed(number, False, kind, str(original))
        if default_unit is None:
            raise UnitError(f"{loc}{text!r} has no unit: expected {expected}")
        unit_text = default_unit
    if unit_text in ("%", "percent") and kind == "dimensionless":
        return Parsed(number / 100.0, False, kind, str(original))
    ureg = _registry()
    try:
        q = ureg.Quantity(number, ureg.parse_units(unit_text))
    except Exception as exc:  # pint raises several types for unknown or malformed units
        raise UnitError(
            f"{loc}unknown unit {unit_text!r} in {text!r}: expected {expected}"
        ) from exc
    dim = q.dimensionality
    target_dim = _dims(ureg, target) if target else ureg.dimensionless.dimensionality
    if dim == target_dim:
        return Parsed(float(q.to(target or "dimensionless").magnitude), False, kind, text)
    if allow_per_kg and target and dim == target_dim / _dims(ureg, "kg"):
        return Parsed(float(q.to(f"({target})/kg").magnitude), True, kind, text)
    # Molar forms: the expected mass-based dimension with mass replaced by substance.
    if target and kind in ("amount", "concentration", "rate"):
        molar_target = target.replace("mg", "mmol")
        mdim = _dims(ureg, molar_target)
        per_kg = False
        if dim != mdim and allow_per_kg and dim == mdim / _dims(ureg, "kg"):
            per_kg = True
        if dim == mdim or per_kg:
            if molar_mass is None:
                raise UnitError(
                    f"{loc}{text!r} is a molar quantity; converting it to {target} needs "
                    "the drug's molar mass (g/mol), which was not given"
                )
            unit = f"({molar_target})/kg" if per_kg else molar_target
            # 1 mmol of a drug of molar mass M g/mol weighs M mg.
            return Parsed(float(q.to(unit).magnitude) * molar_mass, per_kg, kind, text)
    if not allow_per_kg and target and dim == target_dim / _dims(ureg, "kg"):
        raise UnitError(
            f"{loc}{text!r} is per kg of body weight, which is not accepted "
            f"here: expected {expected} as an absolute value"
        )
    extra = " (per kg of body weight allowed)" if allow_per_kg else ""
    raise UnitError(f"{loc}{text!r} has dimension {dim}, expected {expected}{extra}")


def to_internal(text: object, kind: str, **kwargs) -> float:
    """Parse `text` and return its magnitude in internal units; per-kg is refused."""
    parsed = parse_quantity(text, kind, **kwargs)
    if parsed.per_kg:
        raise UnitError(f"{where(kwargs.get('file'), kwargs.get('key'))}{text!r} is per kg")
    return parsed.value


def range_bounds(text: object, key: str) -> tuple[str, str]:
    """The two bounds of a range ``"LOW..HIGH"`` as texts, e.g. ``"50..150 ng/mL"`` ->
    ``("50 ng/mL", "150 ng/mL")``: a bare number takes the other bound's unit (``"50
    ng/mL..0.15 mg/L"`` keeps both). A ``(low, high)`` pair is taken as it is (numbers
    as their text). Which bound is lower is checked by the caller, in its units.
    """
    if isinstance(text, tuple | list):
        if len(text) != 2:
            raise UnitError(f"`{key}` = {text!r}: expected a (low, high) pair")
        return str(text[0]).strip(), str(text[1]).strip()
    s = str(text)
    if s.count("..") != 1 or "..." in s:
        raise UnitError(f"`{key}` = {text!r}: expected LOW..HIGH, e.g. '50..150 ng/mL'")
    a, b = (x.strip() for x in s.split(".."))
    if not a or not b:
        raise UnitError(
            f"`{key}` = {text!r}: expected LOW..HIGH with both bounds, e.g. '50..150 ng/mL'"
        )
    ma, mb = _NUMBER.match(a), _NUMBER.match(b)
    unit_a = ma.group(2) if ma else None
    unit_b = mb.group(2) if mb else None
    if ma and not unit_a and unit_b:
        a = f"{ma.group(1)} {unit_b}"
    elif mb and not unit_b and unit_a:
        b = f"{mb.group(1)} {unit_a}"
    return a, b


def format_quantity(value: float, unit: str, digits: int = 4) -> str:
    """Format a number with `digits` significant digits and a unit, for summaries."""
    return f"{value:.{digits}g} {unit}".strip()


_ANCHOR = re.compile(r"^([A-Za-z_]\w*)\s*(?:([+-])\s*(.+))?$")


def time_ref(text: object, file=None, key=None) -> tuple[str | None, float]:
    """A time: ``"4 h"`` -> (None, 4.0); ``"end_of_surgery + 30 min"`` -> (name, 0.5)."""
    m = _ANCHOR.match(text.strip()) if isinstance(text, str) else None
    if m:
        off = 0.0
        if m[2]:
            off = parse_quantity(m[3], "time", file=file, key=key).value
            off = -off if m[2] == "-" else off
        return m[1], off
    return None, parse_quantity(text, "time", file=file, key=key).value


def exact_time_text(h: float, anchor: str | None = None) -> str:
    """A time that parses back to exactly `h` hours (``%g`` may round: 1/3 h)."""
    for body in (f"{abs(h):g} h", f"{abs(h) * 60:g} min", f"{abs(h) * 3600:g} s", f"{abs(h)!r} h"):
        if parse_quantity(body, "time").value == abs(h):
            break
    if anchor is None:
        return f"-{body}" if h < 0 else body
    return anchor if h == 0 else f"{anchor} {'+' if h > 0 else '-'} {body}"


def amount_text(mg: float, digits: int = 4, unit_of: float | None = None) -> str:
    """An amount (mg) as it is written: in ug when `unit_of` (default: the amount itself)
    is below 1 mg, as for sufentanil (``0.0975`` -> ``'97.5 ug'``), else in mg."""
    ref = abs(mg if unit_of is None else unit_of)
    if 0 < ref < 1:
        return f"{mg * 1000.0:.{digits}g} ug"
    return f"{mg:.{digits}g} mg"
