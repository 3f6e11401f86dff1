"""Stereochemistry: drive an S-ketamine model with the S half of a racemic regimen.

Racemic ketamine is, by definition, an equimolar (1:1) mixture of S- and R-ketamine. The
enantiomers have the same molar mass, so 1 mg of racemate contains 0.5 mg of S-ketamine.
:func:`racemic_to_s_ketamine` turns a regimen written in racemic mg into the same regimen in
S-ketamine mg (every bolus amount, infusion rate and total multiplied by 0.5); an S-ketamine
model then predicts the S-ketamine (and S-metabolite) concentrations of the racemic dose.

What this does **not** model (stated in every dataset it produces, ``attrs``):

* R-ketamine is absent from the simulation: no R-ketamine or R-norketamine concentrations,
  and no R contribution to any effect.
* Enantiomer interactions: an inhibition of S-ketamine elimination by R-ketamine has been
  proposed (Ihmsen-type interaction; recalled in the project's reference document, not
  verified); if real, the racemate would give higher S concentrations than predicted here.
  Geisslinger 1993 (reference doc 3.7, abstract) found S-ketamine kinetics the same whether
  given alone or as the racemate, and no S -> R inversion.
* The S-ketamine model's parameters were estimated after S-ketamine alone: whether they hold
  in the presence of R-ketamine is an extrapolation.

Potency (S about twice racemic in clinical practice) is a pharmacodynamic statement and is
not used here: the conversion is a mass fraction, not an equipotency ratio.
"""

from __future__ import annotations

from dataclasses import replace

from pkpd.errors import ModelError
from pkpd.inputs.regimen import Bolus, Infusion, Regimen, load_regimen

__all__ = [
    "RACEMIC_CAVEATS",
    "S_FRACTION_OF_RACEMATE",
    "is_s_ketamine_model",
    "racemic_attrs",
    "racemic_to_s_ketamine",
]

# Mass fraction of S-ketamine in racemic ketamine: 1:1 mixture of enantiomers of equal
# molar mass (a definition, not a fitted value).
S_FRACTION_OF_RACEMATE = 0.5

RACEMIC_CAVEATS = (
    "racemic doses converted to S-ketamine doses by the mass fraction 0.5 (racemate = 1:1 "
    "S:R, equal molar masses); R-ketamine and R-metabolites are not simulated and contribute "
    "to no effect; an inhibition of S-ketamine elimination by R-ketamine (proposed, not "
    "verified) is NOT modelled, so S concentrations after racemate may be underpredicted if it "
    "exists; the S-ketamine model was estimated after S-ketamine alone; the 0.5 is a mass "
    "fraction, not the clinical potency ratio"
)


def is_s_ketamine_model(spec) -> bool:
    """True if the model's drug is S-ketamine (esketamine), from its ``model.drug`` text."""
    drug = spec.drug.lower()
    return ("s-ketamine" in drug or "esketamine" in drug) and "racemic" not in drug


def racemic_to_s_ketamine(regimen) -> Regimen:
    """The S-ketamine regimen contained in a racemic regimen (every dose x 0.5).

    Parameters
    ----------
    regimen : str, Path or Regimen
        A regimen in racemic ketamine amounts (one-line form, file or object). Per-kg doses
        stay per kg; doses anchored on named events stay anchored.

    Returns
    -------
    Regimen
        Same timing, S-ketamine amounts. Its text records the conversion, so any dataset
        built from it says so in ``attrs["regimen"]``.

    Examples
    --------
    >>> r = racemic_to_s_ketamine("1 mg/kg bolus at 0 h; 0.5 mg/kg/h from 0 h to 2 h")
    >>> [d.amount.value if hasattr(d, "amount") else d.rate.value for d in r.doses]
    [0.5, 0.25]
    """
    reg = load_regimen(regimen)
    f = S_FRACTION_OF_RACEMATE
    doses = []
    for d in reg.doses:
        if isinstance(d, Bolus):
            doses.append(replace(d, amount=replace(d.amount, value=d.amount.value * f)))
        elif isinstance(d, Infusion):
            doses.append(
                replace(
                    d,
                    rate=None if d.rate is None else replace(d.rate, value=d.rate.value * f),
                    total=None if d.total is None else replace(d.total, value=d.total.value * f),
                )
            )
        else:  # pragma: no cover - Regimen only holds boluses and infusions
            raise TypeError(f"unknown dose type {type(d).__name__}")
    return Regimen(
        tuple(doses),
        reg.name,
        reg.description,
        reg.source,
        reg.file,
        reg.anchors,
        _text=f"S-ketamine half (x{f:g}) of the racemic regimen: {reg.text}",
    )


def check_s_ketamine_model(spec) -> None:
    """Raise :class:`ModelError` unless `spec` is an S-ketamine model."""
    if not is_s_ketamine_model(spec):
        raise ModelError(
            f"`racemic`: model {spec.name!r} is a {spec.drug!r} model; the racemic-dose "
            "conversion (S half of the racemate) needs an S-ketamine model such as "
            "fanta2015_otto2021. A racemic model takes racemic doses directly."
        )


def racemic_attrs() -> dict[str, str]:
    """Dataset attributes recording the conversion and its caveats."""
    return {
        "dose_conversion": (
            f"racemic regimen; doses x {S_FRACTION_OF_RACEMATE:g} as S-ketamine "
            "(dose_given and all amounts are S-ketamine mg)"
        ),
        "dose_conversion_caveats": RACEMIC_CAVEATS,
    }
