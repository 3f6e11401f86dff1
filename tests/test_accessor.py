"""The ``ds.pkpd`` accessor (pkpd/output/accessor.py): each method is the function it
delegates to, applied to the dataset."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import pkpd
from pkpd.analysis import metrics
from pkpd.errors import PkpdError
from pkpd.output import plot
from pkpd.output.tables import cohort_summary_lines

REG = "5 mg bolus at 0 h; 1 mg/h from 0 h to 2 h"


@pytest.fixture(scope="module")
def one():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.PkpdWarning)
        return pkpd.simulate("domino_racemic", REG, until="6 h", every="5 min")


@pytest.fixture(scope="module")
def cohort():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.PkpdWarning)
        return pkpd.simulate_cohort(
            "domino_racemic", REG, "healthy_volunteers", 8, seed=2, until="6 h",
            every="10 min", trajectories=True, threads=1,
        )  # fmt: skip


def test_accessor_is_registered_by_import_pkpd(one):
    assert isinstance(one.pkpd, pkpd.output.accessor.PkpdAccessor)


@pytest.mark.parametrize("which", ["one", "cohort"])
def test_metric_methods_equal_the_metric_functions(request, which):
    ds = request.getfixturevalue(which)
    win = {"early": ("0 h", "2 h")}
    pairs = [
        (ds.pkpd.cmax(), metrics.cmax(ds)),
        (ds.pkpd.cmax(("1 h", "3 h")), metrics.cmax(ds, ("1 h", "3 h"))),
        (ds.pkpd.tmax(), metrics.tmax(ds)),
        (ds.pkpd.auc(win, method="linear"), metrics.auc(ds, win, method="linear")),
        (ds.pkpd.time_above({"cp": ["20 ng/mL"]}), metrics.time_above(ds, {"cp": ["20 ng/mL"]})),
        (ds.pkpd.time_below({"cp": ["20 ng/mL"]}), metrics.time_below(ds, {"cp": ["20 ng/mL"]})),
        (ds.pkpd.conc_at({"t1": "1 h"}), metrics.conc_at(ds, {"t1": "1 h"})),
        (ds.pkpd.concentrations(), metrics.concentrations(ds)),
        (ds.pkpd.metrics(windows=win), metrics.nca(ds, windows=win)),
    ]
    for got, expect in pairs:
        xr.testing.assert_identical(got, expect)
    # Not only the same call: the numbers are the result's (cp at 1 h on the grid).
    np.testing.assert_allclose(
        ds.pkpd.conc_at({"t1": "1 h"}).sel(output="cp").squeeze().values,
        (ds.cp if which == "one" else ds.trajectory.sel(traj_output="cp")).sel(time=1.0).values,
        rtol=1e-6,
    )


def test_tables_and_summaries(one, cohort):
    assert cohort.pkpd.patient_table().equals(pkpd.patient_table(cohort))
    assert cohort.pkpd.summary() == cohort_summary_lines(cohort)
    assert one.pkpd.summary() == pkpd.summarize(one, REG).lines()


def _same_figure(tmp_path, method, function, ds, name):
    a, b = tmp_path / f"a_{name}.svg", tmp_path / f"b_{name}.svg"
    method(a)
    function(ds, b)
    assert a.read_bytes() == b.read_bytes() and a.stat().st_size > 1000


def test_plot_is_the_plot_function(tmp_path, one, cohort, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")  # reproducible SVG metadata
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "pkpd"
    _same_figure(tmp_path, one.pkpd.plot, plot.plot_concentrations, one, "one")
    _same_figure(tmp_path, cohort.pkpd.plot, plot.plot_bands, cohort, "cohort")
    with pytest.raises(PkpdError, match=r"ds\.pkpd\.plot: expected one patient"):
        cohort.drop_vars("band").pkpd.plot(tmp_path / "x.png")
