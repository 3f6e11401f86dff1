"""The solver registry (pkpd.engine.solvers.registry) is the one place that names the
solvers: its method names are what `simulate`, the cohort and the CLI accept, ``auto``
resolves there, and the status codes the kernels return are the members of one enum."""

from __future__ import annotations

import types

import click
import pytest

import pkpd
import pkpd.cli
from pkpd.engine.solvers import (
    STATUS_BAD_TIMES,
    STATUS_MAX_STEPS,
    STATUS_MESSAGES,
    STATUS_NONFINITE,
    STATUS_OK,
    STATUS_OUTPUT_NONFINITE,
    STATUS_STEP_UNDERFLOW,
    STATUS_STIFF,
    Status,
    exact,
)
from pkpd.engine.solvers import registry as reg
from pkpd.running.cohort import CohortError

ODE_MODEL = "s_ketamine_pain_turnover"
LINEAR_MODEL = "fanta2015_otto2021"


def test_status_constants_are_the_enum_members_as_plain_ints():
    """The kernels compare plain ints; each is its member's value, and every code has one
    message (codes 0..n-1, no gaps)."""
    plain = {
        "OK": STATUS_OK,
        "NONFINITE": STATUS_NONFINITE,
        "BAD_TIMES": STATUS_BAD_TIMES,
        "MAX_STEPS": STATUS_MAX_STEPS,
        "STEP_UNDERFLOW": STATUS_STEP_UNDERFLOW,
        "STIFF": STATUS_STIFF,
        "OUTPUT_NONFINITE": STATUS_OUTPUT_NONFINITE,
    }
    assert {s.name: int(s) for s in Status} == plain
    assert all(type(v) is int for v in plain.values())
    assert (exact.STATUS_OK, exact.STATUS_NONFINITE, exact.STATUS_BAD_TIMES) == (0, 1, 2)
    assert sorted(STATUS_MESSAGES) == [int(s) for s in Status] == list(range(len(Status)))
    assert all(STATUS_MESSAGES[int(s)] == s.message == Status.describe(s) for s in Status)
    assert Status.describe(99) == "unknown status"


def test_registry_includes_exact_and_auto():
    assert list(reg.SOLVERS) == ["exact", "dopri5", "rodas"]
    assert list(reg.ADAPTIVE) == ["dopri5", "rodas"]
    assert reg.METHODS == ("exact", "dopri5", "rodas", "auto")
    assert not reg.SOLVERS["exact"].adaptive
    assert reg.STIFF_FALLBACK in reg.ADAPTIVE and reg.SOLVERS[reg.STIFF_FALLBACK].stiff
    for info in reg.ADAPTIVE.values():
        assert info.call and info.linear and info.linear_cohort
        assert info.ode_kernel and info.ode_cohort


def test_cli_method_choices_are_the_registry():
    opt = next(p for p in pkpd.cli.simulate.params if p.name == "method")
    assert isinstance(opt.type, click.Choice)
    assert sorted(opt.type.choices) == sorted(reg.METHODS)


@pytest.mark.parametrize(
    ("model", "method", "expected"),
    [
        (LINEAR_MODEL, "auto", ("exact", False, "")),
        (LINEAR_MODEL, "rodas", ("rodas", False, "")),
        (ODE_MODEL, "auto", ("dopri5", True, "auto: nonlinear model")),
        (ODE_MODEL, "dopri5", ("dopri5", False, "")),
    ],
)
def test_resolve(model, method, expected):
    assert tuple(reg.resolve(method, pkpd.load_model(model))) == expected


def test_resolve_auto_on_a_stiff_ode_model_is_rodas():
    # resolve reads only is_linear and ode.stiff: a stand-in for an [ode] model marked stiff
    spec = types.SimpleNamespace(is_linear=False, ode=types.SimpleNamespace(stiff=True))
    assert not pkpd.load_model(ODE_MODEL).is_linear
    assert tuple(reg.resolve("auto", spec)) == (
        "rodas",
        False,
        "auto: the model file says stiff = true",
    )


def test_exact_on_an_ode_model_is_refused_by_simulate_and_cohort():
    spec = pkpd.load_model(ODE_MODEL)
    msg = r"`method` 'exact' is for linear compartment models; 's_ketamine_pain_turnover' is a "
    msg += r"nonlinear \[ode\] model: use 'auto', 'dopri5' or 'rodas'"
    with pytest.raises(ValueError, match=msg):
        reg.resolve("exact", spec)
    with pytest.raises(ValueError, match=msg):
        pkpd.simulate(ODE_MODEL, "0.5 mg/kg bolus at 0 h", {"weight": 70}, method="exact")
    with pytest.raises(CohortError, match=msg):
        pkpd.simulate_cohort(ODE_MODEL, "0.5 mg/kg bolus at 0 h", n=4, method="exact")


def test_check_validates_the_method_and_fills_the_tolerances():
    assert reg.check("dopri5") == (reg.DEFAULT_RTOL, reg.DEFAULT_ATOL)
    assert reg.check("auto", 1e-4, None) == (1e-4, reg.DEFAULT_ATOL)
    with pytest.raises(ValueError, match=r"`method` must be one of 'exact', 'dopri5'"):
        reg.check("lsoda")
    with pytest.raises(ValueError, match=r"method='exact' is exact"):
        reg.check("exact", rtol=1e-3)


def test_attributes_and_failure_messages_come_from_the_entries():
    a = reg.attrs("exact")
    assert a == {
        "solver": "exact: piecewise matrix exponential of the Van Loan augmented system "
        "(Pade 13, scaling and squaring, Higham 2005)",
        "solver_method": "exact",
    }
    a = reg.attrs("rodas", 1e-6, 1e-9, {"nfev": 3}, "a note")
    assert a["solver"].startswith(reg.SOLVERS["rodas"].description)
    assert (a["solver_method"], a["solver_nfev"], a["solver_note"]) == ("rodas", 3, "a note")
    assert reg.failure("exact", 1) == f"exact solver failed (status 1): {Status(1).message}"
    assert reg.failure("dopri5", 5).startswith("Dopri5 failed (status 5): stiffness")


def test_simulate_records_the_resolved_solver():
    ds = pkpd.simulate(LINEAR_MODEL, "0.5 mg/kg bolus at 0 h", {"weight": 70}, until="1 h")
    assert ds.attrs["solver_method"] == "exact"
    assert ds.attrs["solver"] == reg.attrs("exact")["solver"]
