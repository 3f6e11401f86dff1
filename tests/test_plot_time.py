"""Time-course figures as a reader meets them (issue 16): a time window and a log axis,
labelled event and threshold lines, PD on its own panel, honest metabolite units, one-line
titles, and the not-a-clinical-device notice clear of every axis."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner

import pkpd
from pkpd.cli import main
from pkpd.errors import PkpdWarning, PlotError
from pkpd.inputs.regimen import load_regimen
from pkpd.output import plot
from pkpd.output.plot import TimeWindow, regimen_events

matplotlib.use("Agg")

MODEL = "fanta2015_otto2021"
REG = "lumbar_fusion_esketamine"
EOS = 3.5


def _quiet(f, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        return f(*a, **k)


@pytest.fixture(scope="module")
def one():
    return _quiet(
        pkpd.simulate, MODEL, REG, covariates={"weight": 70}, anchors={"end_of_surgery": EOS},
        thresholds={"cp": ["40 ng/mL", "100 ng/mL"]}, every="5 min",
    )  # fmt: skip


@pytest.fixture(scope="module")
def events():
    return regimen_events(load_regimen(REG), {"end_of_surgery": EOS})


@pytest.fixture(scope="module")
def cohort():
    return _quiet(
        pkpd.simulate_cohort, MODEL, REG, "spine_fusion_china", 40, seed=1, until="12 h",
        every="5 min", thresholds={"cp": ["50 ng/mL", "150 ng/mL"]},
    )  # fmt: skip


def _vlines(ax):
    """(x, label) of the vertical lines of `ax`."""
    out = []
    for ln in ax.get_lines():
        x = np.asarray(ln.get_xdata(), dtype=float)
        if x.size == 2 and x[0] == x[1] and ln.get_transform() is not ax.transData:
            out.append((float(x[0]), ln.get_label()))
    return out


def _hlines(ax):
    out = []
    for ln in ax.get_lines():
        y = np.asarray(ln.get_ydata(), dtype=float)
        if y.size == 2 and y[0] == y[1] and ln.get_transform() is not ax.transData:
            out.append(ln)
    return out


# ----------------------------------------------------------------------------- events


def test_regimen_events_are_named_as_the_regimen_states_them():
    ev = regimen_events(load_regimen(REG), {"end_of_surgery": EOS})
    # 0.125 mg/kg/h to end_of_surgery, then 0.02 mg/kg/h to end_of_surgery + 48 h: the step
    # at end_of_surgery is the named event itself, the last end is stated from it.
    assert ev == {"end_of_surgery": EOS, "end of infusion at end_of_surgery + 48 h": EOS + 48}
    ev = regimen_events(
        load_regimen(
            "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 48 h"
        )
    )
    assert ev == {"rate change": 4.0, "end of infusion": 48.0}


def test_event_lines_carry_their_names(tmp_path, one, events):
    fig = plot.plot_concentrations(one, tmp_path / "a.png", events=events)
    lines = _vlines(fig.axes[0])
    assert sorted(lines) == [
        (EOS, "end_of_surgery: 3.5 h"),
        (EOS + 48, "end of infusion at end_of_surgery + 48 h: 51.5 h"),
    ]
    # Two events, two styles.
    styles = {
        (ln.get_linestyle(), ln.get_color()) for ln in fig.axes[0].get_lines() if ln.get_label()
        in {lab for _, lab in lines}
    }  # fmt: skip
    assert len(styles) == 2


# ----------------------------------------------------------------------------- window, log


def test_window_in_hours_limits_the_axis_and_fits_y_to_it(tmp_path, one, events):
    fig = plot.plot_concentrations(one, tmp_path / "a.png", events=events, window="1..6h")
    ax = fig.axes[0]
    assert ax.get_xlim() == (1.0, 6.0)
    t = one.time.values
    inside = (t >= 1) & (t <= 6)
    top = max(one.cp.values[inside].max(), one.cp_norketamine.values[inside].max(), 100.0)
    # The 105 ng/mL bolus peak at t = 0 lies outside: the axis fits what is shown (and the
    # 100 ng/mL threshold), not the whole run.
    assert top <= ax.get_ylim()[1] <= 1.1 * top
    # Only events inside the window are drawn and listed.
    assert [lab for _, lab in _vlines(ax)] == ["end_of_surgery: 3.5 h"]


def test_window_by_event_name_and_offset(tmp_path, one, events):
    fig = plot.plot_concentrations(
        one, tmp_path / "a.png", events=events, window="0..end_of_surgery+2h"
    )
    assert fig.axes[0].get_xlim() == (0.0, EOS + 2)
    fig = plot.plot_concentrations(
        one, tmp_path / "a.png", events=events, window=("end_of_surgery - 30 min", None)
    )
    assert fig.axes[0].get_xlim() == (EOS - 0.5, float(one.time.values[-1]))


def test_log_scale(tmp_path, one, events):
    fig = plot.plot_concentrations(one, tmp_path / "a.png", events=events, log=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lo, hi = ax.get_ylim()
    assert lo > 0 and hi >= one.cp.values.max()
    assert plot.plot_concentrations(one, tmp_path / "b.png").axes[0].get_yscale() == "linear"


@pytest.mark.parametrize(
    "window,match",
    [
        ("6h", r"`window` '6h': expected START\.\.END"),
        ("0..6h..8h", r"expected START\.\.END"),
        ("0..end_of_surgry", r"unknown event 'end_of_surgry'; the events of this run are: "
                             r"end of infusion at end_of_surgery \+ 48 h, end_of_surgery"),
        ("5h..2h", r"the end \(2 h\) must be after the start \(5 h\)"),
        ("0..6 parsecs", r"'6 parsecs' is not a time"),
        ("200h..300h", r"outside the simulated times"),
        (("a", 3, 4), r"expected \"START\.\.END\" or a pair"),
    ],
)  # fmt: skip
def test_bad_window_refused_with_the_value_and_what_is_expected(tmp_path, one, events, window,
                                                                 match):  # fmt: skip
    with pytest.raises(PlotError, match=match):
        plot.plot_concentrations(one, tmp_path / "a.png", events=events, window=window)
    assert not (tmp_path / "a.png").exists()


def test_time_window_parse_names_the_option():
    with pytest.raises(PlotError, match=r"^`--plot-window` 'x': expected START\.\.END"):
        TimeWindow.parse("x", key="--plot-window")
    w = TimeWindow.parse("end_of_surgery-1h..", key="--plot-window")
    assert w.limits({"end_of_surgery": 4.0}, [0.0, 24.0]) == (3.0, 24.0)
    assert TimeWindow.parse("90min..3").limits({}, [0.0, 24.0]) == (1.5, 3.0)


def test_cohort_bands_window_and_log(tmp_path, cohort):
    eos = float(np.median(cohort["end_of_surgery"].values))
    fig = plot.plot_bands(cohort, tmp_path / "b.png", window="0..end_of_surgery+2h", log=True)
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert len(axes) == cohort.sizes["band_output"] == 2
    for ax in axes:
        assert ax.get_xlim() == pytest.approx((0.0, eos + 2))
        assert ax.get_yscale() == "log"  # both outputs are ng/mL concentrations


def test_cohort_threshold_lines_differ_and_carry_their_levels(tmp_path, cohort):
    fig = plot.plot_bands(cohort, tmp_path / "b.png")
    lines = _hlines(fig.axes[0])
    assert [ln.get_label() for ln in lines] == ["threshold 50 ng/mL", "threshold 150 ng/mL"]
    a, b = lines
    assert (a.get_linestyle(), a.get_color()) != (b.get_linestyle(), b.get_color())
    assert a.get_linestyle() != b.get_linestyle() and a.get_color() != b.get_color()


def test_one_patient_threshold_lines_differ(tmp_path, one):
    lines = _hlines(plot.plot_concentrations(one, tmp_path / "a.png").axes[0])
    assert [ln.get_label() for ln in lines] == ["cp > 40 ng/mL", "cp > 100 ng/mL"]
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    assert [ln.get_ydata()[0] for ln in lines] == [40.0, 100.0]


# ----------------------------------------------------------------------------- layout


def _overlaps_notice(fig):
    """Axes (with their tick labels and axis labels) that the notice's box overlaps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the saved figure is closed: draw it again, as saved
    canvas.draw()
    r = canvas.get_renderer()
    notice = next(t for t in fig.texts if t.get_text() == plot.NOTICE)
    box = notice.get_window_extent(r)
    return [ax for ax in fig.axes if ax.get_visible() and box.overlaps(ax.get_tightbbox(r))]


def test_notice_clear_of_every_axis(tmp_path, one, events, cohort):
    assert _overlaps_notice(plot.plot_concentrations(one, tmp_path / "a.png", events=events)) == []
    assert _overlaps_notice(plot.plot_bands(cohort, tmp_path / "b.png")) == []


def test_pd_on_its_own_panel_and_the_axes_keep_the_width(tmp_path):
    ds = _quiet(
        pkpd.simulate, MODEL, "0.5 mg/kg over 40 min from 0 h", covariates={"weight": 70},
        until="4 h", pd=["olofsen2012_analgesia"],
    )  # fmt: skip
    fig = plot.plot_concentrations(ds, tmp_path / "pd.png")
    conc, effect = fig.axes
    assert conc.get_ylabel() == "concentration (ng/mL)"
    assert effect.get_ylabel() == "PD (cm)"
    labels = [ln.get_label() for ln in effect.get_lines()]
    # The effect itself is drawn, with the two contributions it sums.
    assert any(lab.startswith("olofsen2012_analgesia: change in VAS") for lab in labels)
    assert sum(lab.startswith("olofsen2012_analgesia_contribution_") for lab in labels) == 2
    np.testing.assert_array_equal(effect.get_lines()[-1].get_ydata(), ds.olofsen2012_analgesia)
    for ax in fig.axes:
        # Legends inside or below: the axes keep most of the width (the legend beside them
        # used to squeeze them into a third of it).
        assert ax.get_position().width > 0.8
    assert "\n" not in conc.get_title() and len(conc.get_title()) <= 125


def test_identical_series_drawn_once_under_both_names(tmp_path):
    ds = _quiet(
        pkpd.simulate, "simons2022_s_ketamine", "0.5 mg/kg over 40 min from 0 h",
        covariates={"weight": 70}, until="2 h", pd=["simons2022_drug_high"],
        pd_parameters={"simons2022_drug_high.t_half_ke0": "3 min"},
    )  # fmt: skip
    np.testing.assert_array_equal(
        ds.ce_simons2022_drug_high_s_ketamine, ds.simons2022_drug_high_conc_s_ketamine
    )
    labels = [ln.get_label() for ln in plot.plot_concentrations(ds, tmp_path / "a.png").axes[0]
              .get_lines()]  # fmt: skip
    both = [lab for lab in labels if "ce_simons2022_drug_high_s_ketamine" in lab]
    assert len(both) == 1 and "= simons2022_drug_high_conc_s_ketamine" in both[0]


# ----------------------------------------------------------------------------- labels


def test_mass_equivalent_metabolites_are_labelled_so(tmp_path):
    """Simons 2022 carries S-norketamine and S-HNK in S-ketamine mass (their molar mass is
    the parent's in the model file); Otto 2021's S-norketamine is in its own ng/mL."""
    spec = pkpd.load_model("simons2022_s_ketamine")
    assert spec.molar_mass("norketamine") == spec.molar_mass()
    assert spec.mass_equivalent_outputs() == ["cp_norketamine", "cp_hydroxynorketamine"]
    assert pkpd.load_model(MODEL).mass_equivalent_outputs() == []
    ds = _quiet(pkpd.simulate, "simons2022_s_ketamine", "0.5 mg/kg over 40 min from 0 h",
                covariates={"weight": 70}, until="2 h")  # fmt: skip
    labels = {
        ln.get_label().split(":")[0]: ln.get_label()
        for ln in plot.plot_concentrations(ds, tmp_path / "a.png").axes[0].get_lines()
    }
    assert labels["cp_norketamine"].endswith("S-ketamine-equivalent ng/mL")
    assert labels["cp_hydroxynorketamine"].endswith("S-ketamine-equivalent ng/mL")
    assert "equivalent" not in labels["cp"]
    fanta = _quiet(pkpd.simulate, MODEL, "1 mg bolus at 0 h", covariates={"weight": 70},
                   until="2 h")  # fmt: skip
    for ln in plot.plot_concentrations(fanta, tmp_path / "b.png").axes[0].get_lines():
        assert "equivalent" not in ln.get_label()
    cohort = _quiet(
        pkpd.simulate_cohort,
        "simons2022_s_ketamine",
        "0.5 mg/kg over 40 min from 0 h",
        "healthy_volunteers",
        20,
        until="2 h",
    )
    assert cohort.attrs["model_mass_equivalent_outputs"] == "cp_norketamine, cp_hydroxynorketamine"
    ylabels = [ax.get_ylabel() for ax in plot.plot_bands(cohort, tmp_path / "c.png").axes]
    assert ylabels == ["cp (ng/mL)", "S-ketamine-equivalent ng/mL", "S-ketamine-equivalent ng/mL"]


def test_long_regimen_title_is_one_line(tmp_path):
    text = "; ".join(f"{0.01 * (k + 1):g} mg/kg/h from {k} h to {k + 1} h" for k in range(9))
    ds = _quiet(pkpd.simulate, MODEL, text, covariates={"weight": 70}, until="12 h")
    title = plot.plot_concentrations(ds, tmp_path / "a.png").axes[0].get_title()
    assert "\n" not in title and len(title) <= 125 and title.endswith("...")
    assert title.startswith(f"{MODEL}: 0.01 mg/kg/h from 0 h to 1 h; ")


# ----------------------------------------------------------------------------- compare


def test_compare_bands_window_log_and_distinct_labels(tmp_path):
    from pkpd.analysis import design

    cds = _quiet(
        design.compare, MODEL,
        ["0.1 mg/kg bolus at 0 h; 0.1 mg/kg/h from 0 h to end_of_surgery; "
         "0.02 mg/kg/h from end_of_surgery to end_of_surgery + 24 h",
         "0.1 mg/kg bolus at 0 h; 0.1 mg/kg/h from 0 h to end_of_surgery; "
         "0.03 mg/kg/h from end_of_surgery to end_of_surgery + 24 h"],
        "spine_fusion_china", 20, 1, anchor_times={"end_of_surgery": "3 h"}, until="30 h",
    )  # fmt: skip
    fig = plot.plot_compare_bands(cds, tmp_path / "c.png", window="0..end_of_surgery+1h", log=True)
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, 4.0) and ax.get_yscale() == "log"
    labels = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    regimens = labels[:2]
    assert len(set(regimens)) == 2 and all(len(lab) <= 70 for lab in regimens)
    assert labels[2] == "end_of_surgery: median 3 h"
    assert _overlaps_notice(fig) == []
    with pytest.raises(PlotError, match=r"unknown event 'induction'.*end_of_surgery"):
        plot.plot_compare_bands(cds, tmp_path / "d.png", window="induction..6h")


# ----------------------------------------------------------------------------- CLI


def _captured(monkeypatch, name):
    figs = []
    original = getattr(plot, name)

    def spy(*a, **k):
        figs.append(original(*a, **k))
        return figs[-1]

    monkeypatch.setattr(plot, name, spy)
    return figs


ONE = ["simulate", MODEL, REG, "--weight", "70", "--anchor", "end_of_surgery=3.5h",
       "--until", "12h", "--every", "5 min"]  # fmt: skip


def test_cli_plot_window_and_log_one_patient(tmp_path, monkeypatch):
    figs = _captured(monkeypatch, "plot_concentrations")
    png = tmp_path / "a.png"
    r = CliRunner().invoke(
        main,
        [
            *ONE,
            "--plot",
            str(png),
            "--plot-window",
            "end_of_surgery-1h..end_of_surgery+2h",
            "--plot-log",
        ],
    )
    assert r.exit_code == 0, r.output
    ax = figs[-1].axes[0]
    assert ax.get_xlim() == (2.5, 5.5) and ax.get_yscale() == "log"
    assert [lab for _, lab in _vlines(ax)] == ["end_of_surgery: 3.5 h"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_plot_window_cohort(tmp_path, monkeypatch):
    figs = _captured(monkeypatch, "plot_bands")
    r = CliRunner().invoke(main, [
        "simulate", MODEL, REG, "--patients", "30", "--population", "spine_fusion_china",
        "--until", "12h", "--plot", str(tmp_path / "b.png"), "--plot-window", "0..6h",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert all(ax.get_xlim() == (0.0, 6.0) for ax in figs[-1].axes if ax.get_lines())


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--plot-window", "0..end_of_surgry", "--plot", "x.png"],
         r"`--plot-window` '0\.\.end_of_surgry': unknown event 'end_of_surgry'; the events of "
         r"this run are: end of infusion at end_of_surgery \+ 48 h, end_of_surgery"),
        (["--plot-window", "6h", "--plot", "x.png"], r"`--plot-window` '6h': expected START"),
        (["--plot-window", "0..6h"], r"--plot-window.*add --plot FILE\.png"),
        (["--plot-log"], r"--plot-log.*add --plot FILE\.png"),
    ],
)  # fmt: skip
def test_cli_bad_plot_window_refused_before_the_run(tmp_path, monkeypatch, extra, match):
    import pkpd.running.simulate as single

    def boom(*a, **k):
        raise AssertionError("simulated despite a bad --plot-window")

    monkeypatch.setattr(single, "simulate", boom)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, [*ONE, *extra])
    assert r.exit_code == 2
    assert len(r.output.strip().splitlines()) == 1
    assert __import__("re").search(match, r.output), r.output
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_plot_window_cohort_names_the_regimen_events(tmp_path):
    r = CliRunner().invoke(main, [
        "simulate", MODEL, REG, "--patients", "30", "--population", "spine_fusion_china",
        "--plot", str(tmp_path / "b.png"), "--plot-window", "incision..6h",
    ])  # fmt: skip
    assert r.exit_code == 2
    assert "unknown event 'incision'; the events of this run are: end_of_surgery" in r.output
    assert list(tmp_path.iterdir()) == []


def test_cli_compare_plot_window(tmp_path, monkeypatch):
    axes = []
    original = plot._compare_bands_axes

    def spy(ax, *a, **k):
        axes.append(ax)
        return original(ax, *a, **k)

    monkeypatch.setattr(plot, "_compare_bands_axes", spy)
    r = CliRunner().invoke(main, [
        "compare", MODEL, REG, "lumbar_fusion_esketamine_high", "--population",
        "spine_fusion_china", "--patients", "20", "--until", "12h",
        "--plot", str(tmp_path / "c.png"), "--plot-window", "0..end_of_surgery+2h",
        "--plot-log",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.png").exists() and len(axes) == 2  # cp, cp_norketamine
    for ax in axes:
        lo, hi = ax.get_xlim()
        assert lo == 0.0 and 2.0 < hi < 12.0 and ax.get_yscale() == "log"


def test_cli_compare_bad_plot_window_refused_before_the_run(tmp_path, monkeypatch):
    from pkpd.analysis import design

    def boom(*a, **k):
        raise AssertionError("compared despite a bad --plot-window")

    monkeypatch.setattr(design, "compare", boom)
    r = CliRunner().invoke(main, [
        "compare", MODEL, REG, "lumbar_fusion_esketamine_high", "--population",
        "spine_fusion_china", "--patients", "20", "--out", str(tmp_path / "c.nc"),
        "--plot", str(tmp_path / "c.png"), "--plot-window", "0..incision",
    ])  # fmt: skip
    assert r.exit_code == 2
    assert r.output.strip() == (
        "pkpd: error: `--plot-window` '0..incision': unknown event 'incision'; the events "
        "of this run are: end_of_surgery (or give hours, e.g. 0..6h)"
    )
    assert list(tmp_path.iterdir()) == []
