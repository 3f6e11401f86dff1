"""When a reported Cmax is the mixing artefact of an instantaneous bolus.

The published models give a bolus instantaneously (the NONMEM convention their parameters
were estimated with): the amount lands in the dosing compartment at once, so an output that
is that compartment's concentration jumps to ``dose / V1`` at the bolus. That value exists
only in the model (no sample is drawn before the drug has mixed: Domino's model gives
7,937 ng/mL after 0.5 mg/kg at 85 kg). This module finds, per patient and output, whether
Cmax is such a jump, so that results can say so; the user can give boluses over their
injection time instead (``"... bolus at 0 h over 1 min"``,
:func:`pkpd.inputs.regimen.with_bolus_duration`, ``--bolus-over``).

Default: boluses stay instantaneous (as the models were fitted) and the flag is reported.
"""

from __future__ import annotations

import numpy as np

from pkpd.inputs.model import ModelSpec

__all__ = ["ADVICE", "cmax_at_bolus", "jumping_outputs"]

ADVICE = (
    "the instantaneous-bolus mixing peak (dose / V1), which no sample measures: give boluses "
    "over their injection time ('... bolus at 0 h over 1 min', --bolus-over 1min) for a "
    "measurable peak"
)


def jumping_outputs(spec: ModelSpec) -> list[bool]:
    """For each output of a linear model, whether it jumps at an instantaneous bolus (it is
    the concentration of the dosing compartment); all False for ``[ode]`` models, whose
    outputs are expressions (not checked)."""
    if not spec.is_linear:
        return [False] * len(spec.outputs)
    return [o.compartment == spec.dose_compartment for o in spec.outputs]


def cmax_at_bolus(spec: ModelSpec, tmax, ev_t, ev_bolus) -> np.ndarray:
    """``(n_patients, n_outputs)`` bool: Cmax is the jump of an instantaneous bolus.

    `tmax` is ``(n, n_out)`` (h); ``ev_t``, ``ev_bolus`` the patients' event table ``(n, K)``
    as the kernels ran it (the regimen's doses, a PCA pump's deliveries; a bolus given over
    a duration is an infusion there). True where the output jumps at boluses and its Tmax
    is the time of an instantaneous bolus (to 1e-9 h).
    """
    tmax = np.atleast_2d(np.asarray(tmax, float))
    jump = np.array(jumping_outputs(spec), bool)
    ev_bolus = np.asarray(ev_bolus, float)
    if not jump.any() or not np.any(ev_bolus > 0):
        return np.zeros(tmax.shape, bool)
    bt = np.where(ev_bolus > 0, ev_t, np.nan)  # (n, K): instantaneous bolus times
    hit = np.abs(tmax[:, :, None] - bt[:, None, :]) <= 1e-9 * np.maximum(
        1.0, np.abs(bt[:, None, :])
    )
    return np.any(hit, axis=2) & jump[None, :]
