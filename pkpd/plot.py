"""Matplotlib figures (non-interactive Agg backend; nothing opens a window)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_bands", "plot_concentrations"]


def plot_concentrations(
    ds, path: Path, events: list[float] | None = None, fmt: str | None = None
) -> None:
    """Plot every ng/mL output of a one-patient dataset against time and save to `path`.

    Parameters
    ----------
    ds : xarray.Dataset
        Result of :func:`pkpd.simulate`.
    path : Path
        Output file (PNG, or any format matplotlib infers from the suffix).
    events : list of float, optional
        Times (h) to mark with vertical lines (e.g. ends of infusions).
    fmt : str, optional
        Image format (``"png"``, ``"svg"``, ``"pdf"``); default from the suffix of `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outs = [v for v in ds.data_vars if ds[v].attrs.get("units") == "ng/mL"]
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for v in outs:
        ax.plot(ds.time.values, ds[v].values, label=f"{v} ({ds[v].attrs.get('long_name', '')})")
    for t in events or []:
        ax.axvline(t, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("time (h)")
    ax.set_ylabel("concentration (ng/mL)")
    ax.set_title(
        f"{ds.attrs.get('model', '')}: {ds.attrs.get('regimen', '')}", fontsize=8, wrap=True
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.text(
        0.01, 0.005, "Research software, not a clinical dosing device.", fontsize=7, color="0.4"
    )
    fmt = (fmt or Path(path).suffix).lstrip(".").lower() or "png"
    fig.savefig(path, format=fmt, dpi=120)
    plt.close(fig)


def plot_bands(ds, path: Path, fmt: str | None = None) -> None:
    """Percentile bands (5-95 %, 25-75 %, median) of each output of a cohort dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outs = list(ds.band_output.values)
    fig, axes = plt.subplots(
        len(outs), 1, figsize=(8, 3.2 * len(outs)), squeeze=False, layout="constrained"
    )
    t = ds.band_time.values
    for ax, o in zip(axes[:, 0], outs, strict=True):
        b = ds.band.sel(band_output=o)
        q = {float(v): b.sel(quantile=v).values for v in ds["quantile"].values}
        ax.fill_between(t, q[0.05], q[0.95], alpha=0.2, label="5-95 %")
        ax.fill_between(t, q[0.25], q[0.75], alpha=0.35, label="25-75 %")
        ax.plot(t, q[0.5], lw=1.5, label="median")
        ax.set_ylabel(f"{o} (ng/mL)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("time (h)")
    axes[0, 0].set_title(
        f"{ds.attrs.get('model', '')}, {ds.attrs.get('population', '')}, "
        f"{ds.sizes['patient']:,} patients\n{ds.attrs.get('regimen', '')}",
        fontsize=8,
    )
    fig.text(
        0.01, 0.002, "Research software, not a clinical dosing device.", fontsize=7, color="0.4"
    )
    fig.savefig(path, format=(fmt or Path(path).suffix).lstrip(".").lower() or "png", dpi=110)
    plt.close(fig)
