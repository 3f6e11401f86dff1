"""Patients: covariates checked and completed, covariate equations, random effects
(IIV) and individual parameters, vectorised over patients.

:class:`IndividualParameters` is the patient-facing half of
:class:`~pkpd.inputs.model.ModelSpec` (which inherits it): it reads the spec's
``parameters``, ``covariates``, ``param_names``, ``flows``, ``ode``, ``name``,
``population`` and ``_loc()``.
"""

from __future__ import annotations

import difflib
import re
import warnings
from typing import Any

import numpy as np

from pkpd.errors import (
    CovariateDefaultWarning,
    CovariateError,
    CovariateRangeWarning,
    ModelError,
)
from pkpd.inputs.model.schema import Covariate, Parameter
from pkpd.inputs.population import implausible

__all__ = ["ADULT_AGE", "PATIENT_COVARIATES", "IndividualParameters"]

#: Patient descriptors a run accepts whether or not the model uses them (checked for
#: plausibility; ``weight`` also scales per-kg doses). A model's own covariates are
#: accepted too; any other name is an error.
PATIENT_COVARIATES = ("weight", "age", "sex", "height", "bmi")
#: A model whose studied age range ends below this (years) is paediatric.
ADULT_AGE = 18.0
_PAEDIATRIC_RE = re.compile(r"paediatric|pediatric|\bchildren\b|\binfants\b|\bneonates\b", re.I)


class IndividualParameters:
    """Covariates and individual parameters of a model (mixed into ``ModelSpec``)."""

    @property
    def used_covariates(self) -> set[str]:
        """Covariates the parameters or the equations use (``weight`` for per-kg/allometric)."""
        used = {e.covariate for p in self.parameters.values() for e in p.covariates}
        if self.ode is not None:
            used |= set(self.ode.covariate_names)  # referenced in the equations
        if any(p.per_kg or p.weight_exponent for p in self.parameters.values()):
            used.add("weight")
        return used

    @property
    def paediatric(self) -> bool:
        """True for a model estimated in children: its studied age range ends below
        :data:`ADULT_AGE` years, or its ``population`` says paediatric / children."""
        age = self.covariates.get("age")
        if age is not None and age.range is not None and age.range[1] < ADULT_AGE:
            return True
        return bool(_PAEDIATRIC_RE.search(self.population))

    def accepted_covariates(self) -> list[str]:
        """Covariate names a patient may carry: the model's own, then the patient
        descriptors of :data:`PATIENT_COVARIATES` (weight also scales per-kg doses)."""
        return [*self.covariates, *(c for c in PATIENT_COVARIATES if c not in self.covariates)]

    def check_covariate_names(
        self, names, *, where: str = "", what: str = "covariate", also=(), hint: str = ""
    ) -> list[str]:
        """Raise :class:`CovariateError` for a name that differs from an accepted one only
        in case (or is close to one); return the names not accepted at all.

        `where` prefixes the message (e.g. a file name), `what` names the kind of thing
        (``"covariate"``, ``"column"``), `also` are further accepted names (e.g. ``id``).
        """
        accepted = [*self.accepted_covariates(), *also]
        lower = {a.lower(): a for a in accepted}
        unknown = []
        for n in names:
            if n in accepted:
                continue
            near = lower.get(str(n).strip().lower())
            case = " names are case-sensitive;" if near is not None else ""
            if near is None:
                close = difflib.get_close_matches(str(n), accepted, n=1, cutoff=0.8)
                near = close[0] if close else None
                unknown.append(n)
                if near is None:
                    continue
            raise CovariateError(
                f"{where}unknown {what} {n!r} for model {self.name!r}: did you mean `{near}`? "
                f"({case} expected one of {', '.join(accepted)}){hint}".replace("( ", "(")
            )
        return unknown

    def _unknown_covariates(self, names, where: str = "", what: str = "covariate", hint=""):
        unknown = self.check_covariate_names(names, where=where, what=what, hint=hint)
        if unknown:
            raise CovariateError(
                f"{where}unknown {what} {unknown[0]!r} for model {self.name!r}; expected one "
                f"of {', '.join(self.accepted_covariates())}{hint}"
            )

    def report_default(self, name: str, *, need=(), source: str = "", stacklevel: int = 2) -> Any:
        """The default of covariate `name`, which the caller did not supply, said loudly.

        Issues a :class:`CovariateDefaultWarning` naming the covariate and the value; raises
        :class:`CovariateError` when there is no default, or when the model is
        :attr:`paediatric` and the default is a continuous one (an adult reference such
        as the 70-kg allometric standard is not a child's weight). `need` names the
        covariates the regimen needs (``weight`` for per-kg doses); `source` says where the
        covariates were looked for (e.g. a population), for the message.
        """
        cov = self.covariates.get(name)
        for_ = " and its per-kg doses" if name in need else ""
        src = f" by {source}" if source else ""
        if cov is None or cov.default is None:
            raise CovariateError(
                f"{self._loc()}covariate `{name}` is required by the model{for_} and has no "
                f"default: it was not given{src}"
            )
        if cov.categorical or not isinstance(cov.default, int | float):
            value = repr(cov.default)
        else:
            value = f"{cov.default:g} {cov.unit}".strip()
        if self.paediatric and not cov.categorical:
            studied = ", ".join(
                f"{c.name} {c.range[0]:g}-{c.range[1]:g} {c.unit}".strip()
                for c in self.covariates.values()
                if c.range is not None
            )
            raise CovariateError(
                f"{self._loc()}covariate `{name}` was not given{src}: model {self.name!r} was "
                f"estimated in children{f' ({studied})' if studied else ''} and its default "
                f"{value} is an adult reference, not a child's value: pass `{name}`"
            )
        warnings.warn(
            f"model {self.name!r}: covariate `{name}` not given{src}: using the model default "
            f"{value} for the run{for_} (pass `{name}` to silence this)",
            CovariateDefaultWarning,
            stacklevel=stacklevel,
        )
        return cov.default

    def covariate_values(
        self,
        covariates: dict | None = None,
        *,
        warn: bool = True,
        stacklevel: int = 2,
        need=(),
    ) -> dict[str, Any]:
        """Complete and check a patient's covariates.

        Names must be those of the model's covariates or the patient descriptors
        :data:`PATIENT_COVARIATES` (an unknown name, or a wrong case such as ``Race``
        for ``race``, is a :class:`CovariateError`). A covariate the model uses (or one
        named in `need`, e.g. ``weight`` for per-kg doses) that is not given takes the
        model's `default` with a :class:`CovariateDefaultWarning` naming it (see
        :meth:`report_default`: an error for continuous covariates of a paediatric
        model, and where there is no default). Physiologically impossible values of age,
        weight, height and BMI (:data:`pkpd.inputs.population.PLAUSIBLE`) and unknown levels
        are errors; values outside the studied `range` issue a
        :class:`CovariateRangeWarning` (for arrays, one message counting the patients).

        `warn=False` is for callers that have reported the defaults and ranges already
        (a cohort checks its population once) or want reference values
        (:meth:`typical_theta`): no warnings and no default errors; names and values are
        still checked.
        """
        given = dict(covariates or {})
        self._unknown_covariates(given)
        used = self.used_covariates | set(need)
        out = {}
        for name, cov in self.covariates.items():
            if name in given and given[name] is not None:
                v = given.pop(name)
            elif cov.default is not None:
                given.pop(name, None)
                if warn and name in used:
                    v = self.report_default(name, need=need, stacklevel=stacklevel + 1)
                else:
                    v = cov.default
            elif name not in used:
                continue  # declared for range checks only, and not given
            else:
                raise CovariateError(
                    f"{self._loc()}covariate `{name}` is required by the model "
                    "and has no default: pass it"
                )
            if cov.categorical:
                self._check_levels(name, cov, v)
            else:
                v = self._check_number(name, cov, v, warn, stacklevel + 1)
            out[name] = v
        # Keep the other patient descriptors (e.g. weight for per-kg doses when the model
        # has none), checked as the model's own.
        for name, v in given.items():
            if v is None:
                continue
            self._check_descriptor(name, v)
            out[name] = v
        if "weight" in need and out.get("weight") is None:
            raise CovariateError(
                f"{self._loc()}the regimen has per-kg doses: pass covariate `weight` (kg)"
            )
        return out

    def _check_levels(self, name: str, cov: Covariate, v) -> None:
        """A categorical covariate: one value or an array of patients (a cohort), of str or
        object dtype, each one of the levels."""
        a = np.asarray(v)
        vals = np.unique(a).tolist() if a.dtype.kind == "U" else a.ravel().tolist()
        bad = [x for x in vals if not (isinstance(x, str) and x in cov.levels)]
        if bad:
            count = f" ({len(bad)} unknown levels)" if len(bad) > 1 else ""
            raise CovariateError(
                f"{self._loc()}covariate `{name}` = {bad[0]!r}{count}; expected one "
                f"of {', '.join(cov.levels)}"
            )

    def _check_number(self, name: str, cov: Covariate, v, warn: bool, stacklevel: int):
        """A continuous covariate as a float (one patient) or an array: plausible and
        finite (positive for weight and height), warned about outside the studied range.
        `stacklevel` is that of a warning issued here."""
        try:
            arr = np.asarray(v, dtype=float)
        except (TypeError, ValueError):
            raise CovariateError(
                f"{self._loc()}covariate `{name}` = {v!r}: expected a number "
                f"({cov.unit or 'no unit'})"
            ) from None
        why = implausible(name, arr)
        if why is None and not np.all(np.isfinite(arr)):
            why = "expected a finite number"
        if why is None and name in ("weight", "height") and np.any(arr <= 0):
            why = "expected a positive number"
        if why is not None:
            shown = f" = {v!r}" if arr.ndim == 0 else ""
            raise CovariateError(f"{self._loc()}covariate `{name}`{shown}: {why}")
        if warn and cov.range is not None:
            self._range_warning(name, cov, arr, stacklevel + 1)
        return arr if arr.ndim else float(arr)

    def _check_descriptor(self, name: str, v) -> None:
        """A patient descriptor the model does not use (:data:`PATIENT_COVARIATES`)."""
        if name == "sex":
            arr = np.asarray(v, dtype=object)
            bad = [x for x in arr.flat if x not in ("female", "male")]
            if bad:
                raise CovariateError(
                    f"{self._loc()}covariate `sex` = {bad[0]!r}; expected 'female' or 'male'"
                )
        else:
            why = implausible(name, v)
            if why is not None:
                shown = f" = {v!r}" if np.ndim(v) == 0 else ""
                raise CovariateError(f"{self._loc()}covariate `{name}`{shown}: {why}")

    def _range_warning(self, name: str, cov: Covariate, arr: np.ndarray, stacklevel: int):
        lo, hi = cov.range
        out = (arr < lo) | (arr > hi)
        if not out.any():
            return
        if arr.ndim:
            what = (
                f"{int(out.sum())} of {arr.size} patients have covariate `{name}` "
                f"({arr[out].min():.4g} to {arr[out].max():.4g} {cov.unit}) outside"
            )
        else:
            what = f"covariate `{name}` = {float(arr):g} {cov.unit} is outside"
        warnings.warn(
            f"model {self.name!r}: {what} the studied range [{lo:g}, {hi:g}] {cov.unit}; "
            "predictions are extrapolations",
            CovariateRangeWarning,
            stacklevel=stacklevel,
        )

    def individual_parameters(
        self,
        covariates: dict | None = None,
        eta: dict[str, float] | np.ndarray | None = None,
        *,
        warn: bool = True,
    ) -> np.ndarray:
        """Individual parameters in internal units, in :attr:`param_names` order.

        ``P = TV * (WT/WTref)^exponent * prod(covariate effects) * exp(eta)``; per-kg
        typical values are multiplied by the weight instead of the allometric term.

        Parameters
        ----------
        covariates : dict
            Covariate name -> value (scalar or array of patients).
        eta : dict or array, optional
            Random effects on the log scale, by parameter name, or an array of shape
            ``(..., n_par)``.

        Returns
        -------
        theta : ndarray, shape (n_par,) or (n_patients, n_par)
        """
        cov = self.covariate_values(covariates, warn=warn, stacklevel=3)
        cols = [self._typical_value(p, cov) for p in self.parameters.values()]
        theta = np.stack(np.broadcast_arrays(*cols), axis=-1)
        if eta is not None:
            if isinstance(eta, dict):
                unknown = set(eta) - set(self.parameters)
                if unknown:
                    raise ModelError(f"{self._loc()}eta for unknown parameter(s) {sorted(unknown)}")
                e = np.zeros(len(self.param_names))
                for k, val in eta.items():
                    e[self.param_names.index(k)] = val
            else:
                e = np.asarray(eta, dtype=float)
            theta = theta * np.exp(e)
        self._check_theta(theta, "individual parameters")
        return theta

    def _typical_value(self, p: Parameter, cov: dict):
        """Typical value of parameter `p` for covariates `cov` (scalars or arrays)."""
        v = np.asarray(p.value, dtype=float)
        if p.per_kg:
            v = v * np.asarray(cov["weight"], dtype=float)
        if p.weight_exponent:
            wref = self.covariates["weight"].reference
            v = v * (np.asarray(cov["weight"], dtype=float) / wref) ** p.weight_exponent
        for e in p.covariates:
            x = cov[e.covariate]
            if e.type == "categorical":
                xs = np.asarray(x, dtype=object)
                fac = np.vectorize(lambda s, e=e: e.factors.get(s, 1.0), otypes=[float])
                v = v * fac(xs)
            elif e.type == "power":
                v = v * (np.asarray(x, float) / e.reference) ** e.coefficient
            elif e.type == "linear":
                v = v * (1.0 + e.coefficient * (np.asarray(x, float) - e.reference))
            elif e.type == "additive_above":
                v = v + e.coefficient * np.maximum(0.0, np.asarray(x, float) - e.reference)
            else:
                v = v * np.exp(e.coefficient * (np.asarray(x, float) - e.reference))
        return v

    def _check_theta(self, theta, what):
        theta = np.atleast_2d(theta)
        for i, p in enumerate(self.parameters.values()):
            col = theta[:, i]
            if not np.all(np.isfinite(col)):
                raise ModelError(f"{self._loc()}`parameters.{p.name}`: non-finite {what}")
            if p.kind in ("volume", "time") and np.any(col <= 0):
                raise ModelError(
                    f"{self._loc()}`parameters.{p.name}` = {p.unit_text!r}: "
                    f"{what} must be > 0 (a {p.kind})"
                )
            if np.any(col < 0):
                raise ModelError(
                    f"{self._loc()}`parameters.{p.name}` = {p.unit_text!r}: {what} must be >= 0"
                )
            if (
                p.kind == "dimensionless"
                and np.any(col > 1)
                and any(f.fraction_param == p.name for f in self.flows)
            ):
                raise ModelError(f"{self._loc()}`parameters.{p.name}`: a fraction must be <= 1")

    def typical_theta(self) -> np.ndarray:
        """Typical parameter values (reference covariates, no random effects)."""
        return self.individual_parameters({}, warn=False)
