"""Exceptions and warnings of ketamine-pkpd.

Every exception inherits from :class:`PkpdError` and from the built-in that fits the
failure, so callers can catch either (the pattern of pint's ``DefinitionError(ValueError,
PintError)``). Messages name the file, the key, the offending value and what was expected.
"""

from __future__ import annotations


class PkpdError(Exception):
    """Base class of every error raised by ketamine-pkpd."""


class UnitError(PkpdError, ValueError):
    """A quantity has an unknown unit, a wrong dimension, or cannot be parsed."""


class ModelError(PkpdError, ValueError):
    """A model file is invalid: unknown key, missing parameter, bad value."""


class RegimenError(PkpdError, ValueError):
    """A dosing regimen is invalid: negative amount, stop before start, bad syntax."""


class CovariateError(ModelError):
    """A patient covariate is unknown, impossible, of an unknown level, or missing.

    A :class:`ModelError` too, since the model decides which covariates exist and which
    levels they take (earlier versions raised ModelError for these).
    """


class SimulationError(PkpdError, RuntimeError):
    """A solver reported a failure (see the status code in the message)."""


class CacheError(PkpdError, RuntimeError):
    """The code cache (``$PKPD_CACHE_DIR``) is not private: another user could plant code."""


class MetricsError(PkpdError, ValueError):
    """An exposure-metric request is invalid: unknown output, bad window, threshold or factor."""


class RiskError(PkpdError, ValueError):
    """A risk model, a target or a risk/PTA request is invalid (file, key or argument named)."""


class PlotError(PkpdError, ValueError):
    """A figure request is invalid: a bad time window or an event the run does not have."""


class PkpdWarning(UserWarning):
    """Base class of every warning issued by ketamine-pkpd."""


class CovariateRangeWarning(PkpdWarning):
    """A covariate lies outside the range in which the model was estimated."""


class CovariateDefaultWarning(PkpdWarning):
    """A covariate the model or a per-kg dose uses was not given: the model's default is used.

    The message names the covariate and the value used.
    """


class SamplingSiteWarning(PkpdWarning):
    """A PD endpoint is combined with a PK model of another sampling site (arterial/venous)."""


class ProvenanceWarning(PkpdWarning):
    """A model uses values that are assumed rather than verified in the literature."""


class MetricsWarning(PkpdWarning):
    """A metric from stored trajectories is less accurate than documented (reason given)."""


def where(file: object | None, key: str | None) -> str:
    """Format the location prefix ``file: key: `` used in error messages."""
    parts = []
    if file is not None:
        parts.append(str(file))
    if key:
        parts.append(f"`{key}`")
    return (": ".join(parts) + ": ") if parts else ""
