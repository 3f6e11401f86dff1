"""The comparison and design summary figures (issue 16, "Figures and reports"): where the
best point's star sits, the colour scales, PTA and risk on their own axes, what the risk
panel's x axis is, and distinct regimen labels. The figures are built from small
hand-made datasets and inspected as matplotlib objects (``_save`` is replaced by a
function that keeps the figure)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.container import ErrorbarContainer

from pkpd.analysis.design import pareto_front, select_best
from pkpd.output import plot
from pkpd.output.plot import (
    MIN_RISK_SPAN,
    best_cell,
    colour_limits,
    regimen_tick_labels,
    short_labels,
)

RISK = "psy"


@pytest.fixture
def figures(monkeypatch):
    """Figures handed to ``_save``, kept open for inspection (closed afterwards)."""
    kept = []
    monkeypatch.setattr(plot, "_save", lambda fig, path, fmt: kept.append(fig))
    yield kept
    plt = plot._plt()
    for f in kept:
        plt.close(f)


def _grid(max_risk=0.1, rule="upper", low_risk=False):
    """A 3 (bolus) x 4 (rate) x 2 (duration) design grid whose best point, computed by
    select_best, is away from the first row, column and duration."""
    bolus = np.array([0.0, 0.1, 0.25])
    rate = np.array([0.05, 0.2, 0.5, 1.0])
    duration = np.array(["2", "4"])
    b, r, d = np.meshgrid(bolus, rate, [2.0, 4.0], indexing="ij")
    dose = b + r * d
    pta = 1.0 - np.exp(-(2.0 * b + 1.3 * r * d))  # distinct values
    inc = 0.042 + 0.003 * dose / dose.max() if low_risk else 0.02 + 0.08 * dose
    dims = ("bolus", "rate", "duration")
    gds = xr.Dataset(
        {
            "pta": (dims, pta),
            "pta_lo": (dims, pta - 0.02),
            "pta_hi": (dims, np.minimum(pta + 0.02, 1.0)),
            f"incidence_{RISK}": (dims, inc),
            f"incidence_{RISK}_lo": (dims, inc * 0.5),
            f"incidence_{RISK}_hi": (dims, inc * 1.6),
            f"rule_incidence_{RISK}": (dims, inc * 1.6),
            "total_dose": (dims, dose),
            "pareto": (dims, pareto_front(pta, inc)),
            "regimen": (dims, np.vectorize(lambda *a: f"{a[0]:g}/{a[1]:g}/{a[2]:g}")(b, r, d)),
        },
        coords={
            "bolus": ("bolus", bolus, {"units": "mg/kg"}),
            "rate": ("rate", rate, {"units": "mg/kg/h"}),
            "duration": duration,
        },
        attrs={"model": "m", "risk": RISK, "max_risk": max_risk, "risk_rule": rule},
    )
    gds = gds.set_coords("regimen")
    gds["feasible"] = gds[f"rule_incidence_{RISK}"] <= max_risk
    gds.attrs.update(select_best(gds, max_risk=max_risk))
    return gds


def _expected_best(gds):
    """The best point's indices, from the definition: the largest PTA among the points
    whose rule incidence is within the limit (PTA values are distinct here)."""
    ok = gds[f"rule_incidence_{RISK}"].values <= gds.attrs["max_risk"]
    pta = np.where(ok, gds.pta.values, -np.inf)
    return dict(zip(gds.pta.dims, np.unravel_index(int(np.argmax(pta)), pta.shape), strict=True))


def _stars(ax):
    return [c for c in ax.collections if c.get_label().startswith("best")]


def _cell_of(coll):
    """The heatmap cell (column, row) a marker lies in: cells are centred on integers."""
    (x, y), = coll.get_offsets()  # fmt: skip
    return int(np.rint(x)), int(np.rint(y))


def test_grid_fixture_has_an_interior_best():
    gds = _grid()
    exp = _expected_best(gds)
    assert gds.attrs["best_regimen"]
    assert 0 < exp["bolus"] or 0 < exp["rate"]
    assert exp["duration"] == 1


@pytest.mark.parametrize("order", [("bolus", "rate", "duration"), ("rate", "duration", "bolus")])
def test_star_sits_in_the_best_points_cell(figures, order):
    gds = _grid()
    exp = _expected_best(gds)
    gds = gds.transpose(*order)  # best_index keeps the original order; the star must not
    assert best_cell(gds) == exp
    plot.plot_design(gds, "x.png")
    (fig,) = figures
    xd, yd, other = order
    heat = [a for a in fig.axes if a.images]  # row by row: PTA, risk
    n_fields = 2
    assert len(heat) == n_fields * gds.sizes[other]
    for k, ax in enumerate(heat):
        row = k // n_fields
        stars = _stars(ax)
        if row == exp[other]:
            assert len(stars) == 1
            assert _cell_of(stars[0]) == (exp[xd], exp[yd])
            assert ax.get_xlabel().startswith(xd)
        else:
            assert stars == []


def test_star_on_a_single_row_grid(figures):
    """One value of the third variable: the PTA-risk panel goes below the heatmaps."""
    gds = _grid()
    exp = _expected_best(gds)
    one = gds.isel(duration=[exp["duration"]])  # best_index is stale here; the star is not
    plot.plot_design(one, "x.png")
    (fig,) = figures
    heat = [a for a in fig.axes if a.images]
    assert len(heat) == 2
    for ax in heat:
        (star,) = _stars(ax)
        assert _cell_of(star) == (exp["bolus"], exp["rate"])
    (front,) = [a for a in fig.axes if not a.images and a.get_xlabel().startswith(RISK)]
    assert front.get_position().y1 < min(a.get_position().y0 for a in heat)


def test_colour_scale_span_rule():
    assert colour_limits("pta", [0.2, 0.3]) == (0.0, 1.0)
    # 0.042-0.045 must not span the whole scale: 0 to at least MIN_RISK_SPAN.
    lo, hi = colour_limits("risk", [0.042, 0.045, np.nan])
    assert (lo, hi) == (0.0, MIN_RISK_SPAN)
    assert (0.045 - 0.042) / (hi - lo) <= 0.03
    assert colour_limits("risk", [0.042, 0.045], limit=0.2) == (0.0, 0.2)
    assert colour_limits("risk", [0.1, 0.6], limit=0.2) == (0.0, 0.6)
    assert colour_limits("other", [50.0, 80.0]) == (0.0, 80.0)


def test_design_heatmaps_use_the_span_rule_and_show_values(figures):
    gds = _grid(low_risk=True, max_risk=0.05)
    plot.plot_design(gds, "x.png")
    (fig,) = figures
    heat = [a for a in fig.axes if a.images]
    pta_im, risk_im = heat[0].images[0], heat[1].images[0]
    assert pta_im.get_clim() == (0.0, 1.0)
    assert risk_im.get_clim() == (0.0, MIN_RISK_SPAN)
    # every cell carries its value
    texts = {t.get_text() for t in heat[1].texts}
    sub = gds[f"rule_incidence_{RISK}"].isel(duration=0).values
    assert {f"{v:.3f}" for v in sub.ravel()} <= texts


@pytest.mark.parametrize("rule", ["upper", "mean"])
def test_front_panel_draws_the_quantity_the_rule_reads(figures, rule):
    gds = _grid(rule=rule)
    plot.plot_design(gds, "x.png")
    (fig,) = figures
    front = [a for a in fig.axes if not a.images and a.get_xlabel().startswith(RISK)]
    assert len(front) == gds.sizes["duration"]
    ax = front[0]
    var = f"incidence_{RISK}" if rule == "mean" else f"rule_incidence_{RISK}"
    (grid_pts,) = [c for c in ax.collections if c.get_label() == "grid points"]
    x = grid_pts.get_offsets()[:, 0]
    np.testing.assert_array_equal(x, gds[var].isel(duration=0).values.ravel())
    (limit,) = [ln for ln in ax.lines if ln.get_label().startswith("limit")]
    assert set(limit.get_xdata()) == {0.1}
    assert ("97.5 % quantile" if rule == "upper" else "posterior mean") in ax.get_xlabel()


def _cds(labels):
    n, m = len(labels), 50
    rng = np.random.default_rng(0)
    inc = np.linspace(0.05, 0.4, n)
    dose = np.linspace(3.0, 1.0, n)  # dose decreasing while risk increases
    return xr.Dataset(
        {
            "cmax_patient": (("regimen", "patient", "output"), rng.lognormal(4, 0.3, (n, m, 1))),
            "dose_per_kg_patient": (("regimen", "patient"), np.repeat(dose[:, None], m, 1)),
            "dose_per_kg": (("regimen", "percentile"), np.repeat(dose[:, None], 3, 1)),
            "total_dose": (("regimen",), dose),
            "pta": (("regimen",), np.linspace(0.2, 0.9, n)),
            "pta_lo": (("regimen",), np.linspace(0.1, 0.8, n)),
            "pta_hi": (("regimen",), np.linspace(0.3, 1.0, n)),
            f"incidence_{RISK}": (("regimen",), inc),
            f"incidence_{RISK}_lo": (("regimen",), inc / 2),
            f"incidence_{RISK}_hi": (("regimen",), inc * 2),
        },
        coords={"regimen": labels, "output": ["cp"], "percentile": [5.0, 50.0, 95.0]},
        attrs={"model": "m", "target": "cp >= 50 ng/mL for 50%"},
    )


def _data_lines(ax):
    """The data line of every error-bar plot on `ax`."""
    return [c.lines[0] for c in ax.containers if isinstance(c, ErrorbarContainer)]


LONG = [
    "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h",
    "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 8 h",
    "lumbar_fusion_esketamine_high",
]


def test_regimen_tick_labels_are_distinct_and_wrapped():
    out = regimen_tick_labels(LONG)
    assert len(set(out)) == len(out)
    assert all(len(line) <= 18 for lab in out for line in lab.split("\n"))
    # wrapping only adds line breaks (and drops the spaces it breaks at)
    cut = short_labels(LONG, 40)
    assert [s.replace(" ", "") for s in cut] == [o.replace("\n", "").replace(" ", "") for o in out]


def test_compare_pta_and_risk_on_separate_axes(figures):
    cds = _cds(LONG)
    plot.plot_compare(cds, "x.png")
    (fig,) = figures
    pta_ax = [a for a in fig.axes if a.get_ylabel().startswith("PTA")]
    risk_ax = [a for a in fig.axes if "incidence" in a.get_ylabel()]
    assert len(pta_ax) == 1 and len(risk_ax) == 1
    pa, ra = pta_ax[0], risk_ax[0]
    assert pa is not ra
    # not twins: their boxes do not overlap, and neither shares the other's x axis
    assert not pa.get_position().overlaps(ra.get_position())
    assert ra not in pa.get_shared_x_axes().get_siblings(pa)
    # both carry the (distinct) regimen labels
    for ax in (pa, ra):
        labs = [t.get_text() for t in ax.get_xticklabels()]
        assert labs == regimen_tick_labels(LONG)
        assert len(set(labs)) == len(labs)


@pytest.mark.parametrize("draw", ["compare", "risk_vs_dose"])
def test_compare_risk_is_per_regimen_not_against_dose(figures, draw):
    cds = _cds(LONG)
    if draw == "compare":
        plot.plot_compare(cds, "x.png")
    else:
        plot.plot_risk_vs_dose(cds, "x.png")
    (fig,) = figures
    (ax,) = [a for a in fig.axes if "incidence" in a.get_ylabel()]
    (line,) = _data_lines(ax)
    # one category per regimen at 0, 1, 2 (one risk: no offset), not the doses
    np.testing.assert_array_equal(line.get_xdata(), np.arange(cds.sizes["regimen"]))
    np.testing.assert_array_equal(line.get_ydata(), cds[f"incidence_{RISK}"].values)
    assert "dose" not in ax.get_xlabel()
    assert ax.get_ylim()[0] == 0.0


def test_design_risk_against_dose_uses_the_grid_dose(figures):
    gds = _grid()
    plot.plot_risk_vs_dose(gds, "x.png")
    (fig,) = figures
    (ax,) = fig.axes
    (line,) = _data_lines(ax)
    np.testing.assert_array_equal(line.get_xdata(), gds.total_dose.values.ravel())
    (limit,) = [ln for ln in ax.lines if ln.get_label().startswith("limit")]
    assert "97.5 % quantile" in limit.get_label()
