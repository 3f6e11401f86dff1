"""The ``pkpd`` command.

Research software for pharmacology and protocol design: not a clinical dosing device.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import traceback
import warnings
from typing import NoReturn

import click
import numpy as np

from pkpd._version import __version__
from pkpd.engine.solvers import registry as solvers
from pkpd.errors import PkpdError, PkpdWarning
from pkpd.running.simulate import DISCLAIMER

_DEBUG = False


# Characters that a terminal interprets (ESC sequences, carriage return, bidirectional
# overrides): printed as visible escapes when they come from files or arguments.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _printable(text: str, newlines: bool = True) -> str:
    """`text` with control characters shown as ``\\x1b``-style escapes (``\\n`` kept)."""
    out = _UNPRINTABLE.sub(lambda m: _escape(m.group()), text)
    return out if newlines else out.replace("\n", "\\n")


def _escape(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def _echo(message: object = None, err: bool = False) -> None:
    """click.echo of text that may come from files: no raw control characters."""
    click.echo(None if message is None else _printable(str(message)), err=err)


def _fail(message: str, status: int = 2) -> NoReturn:
    """The one-line error of the command (traceback first with --debug)."""
    if _DEBUG:
        traceback.print_exc()
    _echo(f"pkpd: error: {_printable(message, newlines=False)}", err=True)
    sys.exit(status)


def _click_error(exc: click.ClickException) -> NoReturn:
    """click's own errors (unknown option, missing argument, bad choice) in one line."""
    msg = exc.format_message()
    if isinstance(exc, click.UsageError) and not isinstance(exc, click.BadParameter):
        if exc.ctx is not None:
            msg = f"{msg.rstrip('.')} (see '{exc.ctx.command_path} --help')"
    _fail(msg, exc.exit_code)


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like SIGINT so that every ``finally`` and cleanup runs."""


def _on_sigterm(signum, frame) -> None:
    raise _Interrupted


class _Group(click.Group):
    """Turn known errors into one-line messages (traceback only with --debug)."""

    def make_context(self, info_name, args, parent=None, **extra):
        # Errors in the top-level options (`pkpd --nope`) are raised here, before invoke.
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `pkpd` alone prints the help, as before
        except click.ClickException as exc:
            _click_error(exc)

    def invoke(self, ctx):
        # Signal handlers can only be set from the main thread (not when embedded).
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # Output piped into a program that stopped reading (e.g. `| head`): not an error.
            sys.stdout = open(os.devnull, "w")
            sys.exit(0)
        except (PkpdError, ValueError, OSError) as exc:
            _fail(str(exc))
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.ClickException as exc:
            # A bad option value, an unknown option or a missing argument is bad input like
            # any other: one line, no usage block.
            _click_error(exc)
        except KeyboardInterrupt as exc:
            # SIGINT or SIGTERM: outputs and temporaries were cleaned up on the way here;
            # exit with the shell's status for a signal (128 + its number).
            sig = signal.SIGTERM if isinstance(exc, _Interrupted) else signal.SIGINT
            if _DEBUG:
                traceback.print_exc()
            _echo(f"pkpd: interrupted ({sig.name})", err=True)
            sys.exit(128 + sig)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _showwarning(message, category, filename, lineno, file=None, line=None):
    prefix = "warning" if issubclass(category, PkpdWarning) else category.__name__
    _echo(f"pkpd: {prefix}: {message}", err=True)


@click.group(
    cls=_Group,
    help=f"""Simulate perioperative ketamine and S-ketamine infusions.

\b
{DISCLAIMER}

\b
Examples:
  pkpd models
  pkpd models show fanta2015_otto2021
  pkpd simulate fanta2015_otto2021 "0.2 mg/kg bolus at 0 h; 0.125 mg/kg/h from 0 h to 4 h" \\
       --weight 70 --until 24h --out result.nc --plot result.png
""",
)
@click.version_option(__version__, prog_name="pkpd")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    global _DEBUG
    _DEBUG = debug
    # The command reports the package's warnings on stderr, once each, and never turns
    # them into errors (whatever filters the calling process set).
    warnings.showwarning = _showwarning
    warnings.simplefilter("default", PkpdWarning)


# ----------------------------------------------------------------------------- models


@main.group(invoke_without_command=True, help="List the shipped models, or show one.")
@click.pass_context
def models(ctx) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from pkpd.inputs.model import available_models, load_model

    rows = []
    pops = {}
    for name in available_models():
        m = load_model(name)
        rows.append(
            (name, m.drug, m.sampling_site, m.verification_summary(), m.citation.split(".")[0])
        )
        pops[name] = _short(m.population)
    head = ("name", "drug", "sampling", "verification", "source")
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(4)]
    _echo("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + "  source")
    for r in rows:
        _echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + f"  {r[4]}")
        _echo(f"    population: {pops[r[0]]}")
    _echo_pd_table()
    _echo("\nPopulations and caveats: pkpd models show NAME")


def _echo_pd_table() -> None:
    """PD endpoints (models/pd) under the PK table of `pkpd models`."""
    from pkpd.inputs.pd import list_rows

    rows = list_rows()
    if not rows:
        return
    head = ("PD endpoint", "drug", "sampling", "effect", "verification")
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(5)]
    _echo("\n" + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  source")
    for r in rows:
        _echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + f"  {r[5]}")


@models.command("show", help="Parameters of one model with units, sources and tags.")
@click.argument("name")
def models_show(name: str) -> None:
    from pkpd.inputs.model import TAGS, load_model
    from pkpd.inputs.pd import available_pd, describe

    if name in available_pd() or (name.endswith(".toml") and "[endpoint]" in _head(name)):
        for line in describe(name):
            _echo(line)
        return
    m = load_model(name)
    _echo(f"{m.name}: {m.title}")
    for label, val in (
        ("drug", m.drug),
        ("citation", m.citation),
        ("doi", m.doi or "none"),
        ("population", m.population),
        ("sampling site", m.sampling_site),
        ("verification", m.verification_summary()),
        ("file", str(m.file)),
    ):
        _echo(f"  {label}: {val}")
    for n in m.notes:
        _echo(f"  note: {n}")
    _echo("\nparameters (typical values; internal units h, L, mg):")
    for p in m.parameters.values():
        scale = ""
        if p.per_kg:
            scale = " x weight"
        elif p.weight_exponent:
            ref = m.covariates["weight"].reference
            scale = f" x (WT/{ref:g} kg)^{p.weight_exponent:g}"
        for e in p.covariates:
            if e.type == "categorical":
                scale += f" x {e.covariate} factor {e.factors}"
            else:
                scale += f" x {e.type}({e.covariate}, ref {e.reference:g}, {e.coefficient:g})"
        unit = {"volume": "L", "clearance": "L/h", "rate_constant": "1/h", "time": "h"}.get(
            p.kind, ""
        )
        _echo(f"  {p.name:<6} {p.unit_text:<14} = {p.value:.6g} {unit}{scale}")
        _echo(f"         [{TAGS[p.source.tag]}] {p.source.reference}")
        if p.source.note:
            _echo(f"         note: {p.source.note}")
    if m.covariates:
        _echo("\ncovariates:")
        for c in m.covariates.values():
            rng = (
                f"studied range {c.range[0]:g}-{c.range[1]:g} {c.unit}"
                if c.range
                else ("levels " + ", ".join(c.levels) if c.levels else "range not reported")
            )
            ref = f", reference {c.reference:g} {c.unit}" if c.reference is not None else ""
            _echo(f"  {c.name}: {rng}{ref}")
    if m.variability:
        _echo("\ninter-individual variability (log-normal, omega^2):")
        for v in m.variability:
            if v.omega is None:
                _echo(
                    f"  {', '.join(v.parameters)}: MISSING in the source "
                    f"[{TAGS[v.source.tag]}] {v.source.reference}"
                )
                continue
            cv = np.sqrt(np.expm1(np.diag(v.omega))) * 100
            cvs = ", ".join(f"{p} {c:.1f}%" for p, c in zip(v.parameters, cv, strict=True))
            _echo(
                f"  {', '.join(v.parameters)}: omega^2 {v.omega.tolist()} "
                f"(CV {cvs}) [{TAGS[v.source.tag]}]"
            )
    else:
        _echo("\ninter-individual variability: none published")
    if m.residual:
        _echo("\nresidual error:")
        for r in m.residual.values():
            parts = []
            if r.proportional_sd:
                parts.append(f"proportional SD {r.proportional_sd:g}")
            if r.additive_sd:
                parts.append(f"additive SD {r.additive_sd * 1000:g} ng/mL")
            _echo(f"  {r.output}: {r.type}, {', '.join(parts)} [{TAGS[r.source.tag]}]")
    from pkpd.inputs.ode import output_scales

    units = output_scales(m)[1]
    _echo(
        "\noutputs: " + ", ".join(f"{o} ({u})" for o, u in zip(m.output_names, units, strict=True))
    )


@main.group(invoke_without_command=True, help="List the shipped cohort populations, or show one.")
@click.pass_context
def populations(ctx) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from pkpd.inputs.population import available_populations, load_population

    for name in available_populations():
        pop = load_population(name)
        _echo(f"{name:<28} {pop.description.splitlines()[0] if pop.description else ''}")
    _echo("\nDetails and sources: pkpd populations show NAME")


@populations.command("show", help="Distributions of one population with their sources.")
@click.argument("name")
def populations_show(name: str) -> None:
    from pkpd.inputs.population import load_population

    _echo(load_population(name).describe())


# ----------------------------------------------------------------------------- simulate


def _covariates(weight, age, sex, extra) -> dict:
    from pkpd.inputs.population import implausible
    from pkpd.inputs.units import parse_quantity

    cov: dict = {}
    if weight is not None:
        cov["weight"] = parse_quantity(weight, "weight", default_unit="kg", key="--weight").value
    if age is not None:
        cov["age"] = parse_quantity(age, "age", default_unit="year", key="--age").value
    for name, text in (("weight", weight), ("age", age)):
        why = implausible(name, cov.get(name))
        if name in cov and why is not None:
            raise click.BadParameter(f"{text!r}: {why}", param_hint=f"--{name}")
    if sex is not None:
        cov["sex"] = {"f": "female", "m": "male"}.get(sex.lower(), sex.lower())
    for item in extra:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--covariate")
        k, v = item.split("=", 1)
        try:
            cov[k.strip()] = float(v)
        except ValueError:
            cov[k.strip()] = v.strip()
    return cov


# ignore_unknown_options: a regimen such as "-5 mg bolus at 0 h" must reach the regimen
# parser (and its clear error), not be taken for an option.
@main.command(
    context_settings={"ignore_unknown_options": True},
    help="""Simulate one patient exactly and print an exposure summary.

\b
MODEL    a shipped model name (see `pkpd models`) or a model .toml file
REGIMEN  a regimen .toml file or the one-line form, e.g.
         "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 48 h"
""",
)
@click.argument("model")
@click.argument("regimen")
@click.option("--weight", help="Body weight, kg (e.g. 70 or '70 kg').")
@click.option("--age", help="Age, years.")
@click.option("--sex", type=click.Choice(["F", "M", "f", "m", "female", "male"]), help="Sex.")
@click.option(
    "--covariate",
    "extra",
    multiple=True,
    metavar="NAME=VALUE",
    help="Any other covariate the model uses (repeatable).",
)
@click.option(
    "--anchor",
    "anchor_items",
    multiple=True,
    metavar="EVENT=TIME",
    help="Time of a named event the regimen refers to, e.g. end_of_surgery=3.5h (repeatable).",
)
@click.option(
    "--until",
    default=None,
    help="End of the output grid (default: 24 h after the last dose event).",
)
@click.option("--every", default="1 min", show_default=True, help="Output grid step.")
@click.option(
    "--out",
    "out_nc",
    type=click.Path(),
    help="Write the dataset: NetCDF (.nc), or for a cohort also Zarr (.zarr, written chunk "
    "by chunk).",
)
@click.option(
    "--csv", "out_csv", type=click.Path(dir_okay=False), help="Write the time courses as CSV."
)
@click.option(
    "--patients",
    type=int,
    help="Simulate a virtual cohort of this many patients (needs --population).",
)
@click.option(
    "--population",
    help="Cohort population: a shipped name (see `pkpd populations`), a population .toml "
    "or a covariate table .csv (one row per patient).",
)
@click.option(
    "--extra-columns",
    type=click.Choice(["error", "ignore"]),
    default="error",
    show_default=True,
    help="Cohort from a covariate .csv: columns that are not covariates of the model (nor "
    "id, sex, age, weight, height, bmi) are an error, or ignored.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Cohort random seed.")
@click.option(
    "--trajectories",
    help="Cohort: keep the time courses of these outputs (comma-separated, or 'all').",
)
@click.option(
    "--amounts",
    is_flag=True,
    help="Cohort: also keep the amount (mg) in every compartment on the trajectory grid "
    "(exact solver; implies --trajectories all when none are named).",
)
@click.option(
    "--trajectory-dtype",
    type=click.Choice(["float32", "float64"]),
    default="float32",
    show_default=True,
    help="Cohort: storage of kept trajectories and amounts.",
)
@click.option(
    "--window",
    "windows",
    multiple=True,
    metavar="NAME=START..END",
    help="Cohort AUC window, e.g. postop24=end_of_surgery..end_of_surgery+24h (repeatable).",
)
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    metavar="OUTPUT=CONC",
    help="Cohort time-above-threshold metric, e.g. cp=100ng/mL (repeatable).",
)
@click.option(
    "--at",
    "at_items",
    multiple=True,
    metavar="NAME=TIME",
    help="Cohort concentration at a named time, e.g. eos1h=end_of_surgery+1h (repeatable).",
)
@click.option("--no-iiv", is_flag=True, help="Cohort: no inter-individual variability.")
@click.option("--no-bands", is_flag=True, help="Cohort: skip the percentile bands.")
@click.option("--chunk-size", type=int, default=8192, show_default=True, help="Cohort chunk.")
@click.option("--threads", type=int, help="Numba threads (default: all cores).")
@click.option(
    "--dask",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Cohort: run chunks on dask.distributed (a local cluster, or a scheduler address).",
)
@click.option(
    "--plot",
    "out_png",
    type=click.Path(dir_okay=False),
    help="Write a concentration plot (.png, .svg or .pdf).",
)
@click.option(
    "--method",
    type=click.Choice(["auto", *solvers.SOLVERS]),
    default="auto",
    show_default=True,
    help="Solver: exact (linear models), dopri5, rodas (stiff), or auto (exact for linear "
    "models; Dopri5, or Rodas4 if the model is stiff, for [ode] models).",
)
@click.option("--rtol", type=float, help="Relative tolerance of dopri5/rodas (default 1e-6).")
@click.option(
    "--atol", type=float, help="Absolute tolerance of dopri5/rodas, internal units (default 1e-9)."
)
@click.option(
    "--pd",
    "pd_names",
    multiple=True,
    metavar="ENDPOINT",
    help="Evaluate a PD endpoint (see `pkpd models`; repeatable).",
)
@click.option(
    "--pd-param",
    "pd_items",
    multiple=True,
    metavar="ENDPOINT.PARAM=VALUE",
    help="A PD value the literature does not give, e.g. simons2022_drug_high.gamma=2 "
    "(recorded as user-supplied; repeatable).",
)
@click.option(
    "--racemic",
    is_flag=True,
    help="The regimen is in racemic ketamine mg: drive an S-ketamine model with its S half "
    "(x 0.5; R-ketamine and its interactions are not modelled).",
)
def simulate(
    model,
    regimen,
    weight,
    age,
    sex,
    extra,
    anchor_items,
    until,
    every,
    out_nc,
    out_csv,
    patients,
    population,
    seed,
    trajectories,
    windows,
    thresholds,
    at_items,
    no_iiv,
    no_bands,
    chunk_size,
    threads,
    dask,
    out_png,
    method="auto",
    rtol=None,
    atol=None,
    pd_names=(),
    pd_items=(),
    racemic=False,
    amounts=False,
    trajectory_dtype="float32",
    extra_columns="error",
) -> None:
    if patients is not None or population is not None:
        _no_cohort_pd(pd_names, pd_items, racemic)
        if out_csv:
            raise click.BadParameter(
                "CSV output is for one patient; use --out FILE.nc or FILE.zarr for a cohort",
                param_hint="--csv",
            )
        if weight or age or sex or extra or anchor_items:
            raise click.BadParameter(
                "a cohort draws its covariates and event times from "
                "--population and the regimen file; --weight, --age, "
                "--sex, --covariate and --anchor are for one patient",
                param_hint="--population",
            )
        _simulate_cohort(
            model,
            regimen,
            patients,
            population,
            seed,
            until,
            every,
            out_nc,
            trajectories,
            windows,
            thresholds,
            at_items,
            no_iiv,
            no_bands,
            chunk_size,
            threads,
            dask,
            out_png,
            {
                **_method_options(method, rtol, atol),
                "amounts": amounts,
                "trajectory_dtype": trajectory_dtype,
                "extra_columns": extra_columns,
            },
        )
        return
    if extra_columns != "error":
        raise click.BadParameter(
            "is for a cohort from a covariate table (--population FILE.csv)",
            param_hint="--extra-columns",
        )
    if amounts:
        raise click.BadParameter(
            "amounts are kept for cohorts (--patients); a single patient's states are in "
            "its simulation result", param_hint="--amounts",
        )  # fmt: skip
    from pkpd.inputs.model import load_model
    from pkpd.inputs.regimen import load_regimen
    from pkpd.output.io import (
        atomic_outputs,
        check_target,
        csv_metadata_path,
        write_csv,
        write_csv_metadata,
        write_netcdf,
    )
    from pkpd.running.simulate import simulate as run
    from pkpd.running.simulate import summarize

    targets = []
    if out_nc:
        targets.append(("nc", check_target(out_nc, (".nc",), "--out")))
    if out_csv:
        targets.append(("csv", check_target(out_csv, (".csv",), "--csv")))
        # Provenance beside the CSV, so that the CSV itself is one header row + numbers.
        meta = csv_metadata_path(targets[-1][1])
        targets.append(("csv_meta", check_target(meta, (".json",), "--csv sidecar")))
    if out_png:
        targets.append(("png", check_target(out_png, (".png", ".svg", ".pdf"), "--plot")))
    spec = load_model(model)
    anchors = {}
    for item in anchor_items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected EVENT=TIME", param_hint="--anchor")
        k, v = item.split("=", 1)
        anchors[k.strip()] = v.strip()
    reg = load_regimen(regimen).resolve(anchors)
    cov = _covariates(weight, age, sex, extra)
    extra_run = _pd_run_options(pd_names, pd_items, racemic)
    extra_run.update(_method_options(method, rtol, atol))
    # The command holds two simulations (the output grid, and that grid merged with the dose
    # events) and copies for its files: each may use a quarter of the available memory.
    from pkpd.running.cohort import _available_memory

    extra_run["memory_limit"] = int(0.8 * _available_memory()) // _SINGLE_COPIES
    ds = run(spec, reg, covariates=cov, until=until, every=every, **extra_run)
    # Summary on the output grid merged with every dose event, so peaks at a bolus or at
    # the end of an infusion are evaluated exactly.
    grid = ds.time.values
    w = ds.attrs["covariates"]
    ev_t = reg.event_table(
        cov.get(
            "weight", spec.covariates.get("weight").default if "weight" in spec.covariates else None
        )
        if reg.uses_weight
        else None
    ).t
    fine_t = np.union1d(grid, ev_t[(ev_t >= grid[0]) & (ev_t <= grid[-1])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)  # already reported once above
        fine = run(spec, reg, covariates=cov, times=fine_t, **extra_run)
    summ = summarize(fine, reg)
    _echo(
        f"model: {spec.name} ({spec.drug}; {spec.sampling_site} sampling; "
        f"{spec.verification_summary()})"
    )
    _echo(f"regimen: {reg.text}")
    _echo(f"covariates: {w}")
    _echo(_solver_line(ds))
    if spec.assumed_parameters:
        _echo(f"assumed (not literature) values: {', '.join(spec.assumed_parameters)}")
    for line in summ.lines():
        _echo(line)
    _echo_pd_summary(fine, extra_run)
    with atomic_outputs() as stage:
        for kind, path in targets:
            if kind == "nc":
                stage(path, lambda tmp: write_netcdf(ds, tmp))
            elif kind == "csv":
                stage(path, lambda tmp: write_csv(ds, tmp))
            elif kind == "csv_meta":
                stage(path, lambda tmp: write_csv_metadata(ds, tmp))
            else:
                from pkpd.output.plot import plot_concentrations

                stage(
                    path,
                    lambda tmp, path=path: plot_concentrations(
                        ds, tmp, events=reg.infusion_ends(), fmt=path.suffix
                    ),
                )
    for _kind, path in targets:
        _echo(f"wrote {path}")
    _echo(DISCLAIMER)


#: Simulations of one patient (and output copies of them) the command holds at once.
_SINGLE_COPIES = 4


def _pairs(items, option, sep="="):
    out = {}
    for item in items:
        if sep not in item:
            raise click.BadParameter(f"{item!r}: expected NAME{sep}VALUE", param_hint=option)
        k, v = item.split(sep, 1)
        out[k.strip()] = v.strip()
    return out


def _simulate_cohort(
    model,
    regimen,
    patients,
    population,
    seed,
    until,
    every,
    out,
    trajectories,
    windows,
    thresholds,
    at_items,
    no_iiv,
    no_bands,
    chunk_size,
    threads,
    dask,
    out_png,
    method_options,
):
    from pkpd.inputs.model import load_model
    from pkpd.inputs.population import CovariateTable
    from pkpd.output.io import check_target
    from pkpd.running.cohort import simulate_cohort

    if population is None:
        raise click.BadParameter(
            "a cohort needs --population (e.g. healthy_volunteers, or a covariate table .csv)",
            param_hint="--population",
        )
    if out:
        check_target(out, (".nc", ".zarr"), "--out")
    if out_png:
        check_target(out_png, (".png", ".svg", ".pdf"), "--plot")
    pop = CovariateTable.from_csv(population) if population.endswith(".csv") else population
    if patients is None and not isinstance(pop, CovariateTable):
        raise click.BadParameter("how many patients? give --patients N", param_hint="--patients")
    win = {}
    for name, span in _pairs(windows, "--window").items():
        if ".." not in span:
            raise click.BadParameter(f"{span!r}: expected START..END", param_hint="--window")
        a, b = span.split("..", 1)
        win[name] = (a.strip(), b.strip())
    thr: dict[str, list[str]] = {}
    for o, v in (([*i.split("=", 1), ""])[:2] for i in thresholds):
        if not v:
            raise click.BadParameter(f"{o!r}: expected OUTPUT=CONC", param_hint="--threshold")
        thr.setdefault(o.strip(), []).append(v.strip())
    spec = load_model(model)
    traj = None
    if trajectories:
        traj = True if trajectories == "all" else [t.strip() for t in trajectories.split(",")]
    ds = simulate_cohort(
        spec,
        regimen,
        pop,
        patients,
        seed,
        until=until,
        every=every,
        windows=win or None,
        at=_pairs(at_items, "--at") or None,
        thresholds=thr or None,
        trajectories=traj,
        bands=not no_bands,
        iiv=not no_iiv,
        chunk_size=chunk_size,
        threads=threads,
        out=out,
        dask=dask,
        raise_on_failure="all",  # partial failures are reported below, per patient
        **method_options,
    )
    n = int(ds.sizes["patient"])
    _echo(
        f"model: {spec.name} ({spec.drug}; {spec.sampling_site} sampling; "
        f"{spec.verification_summary()})"
    )
    _echo(f"regimen: {ds.attrs['regimen']}")
    _echo(f"population: {ds.attrs['population']}, {n:,} patients, seed {ds.attrs['seed']}")
    if solvers.SOLVERS[ds.attrs.get("solver_method", "exact")].adaptive:
        _echo(
            f"solver: {ds.attrs['solver_method']} (rtol {ds.attrs['solver_rtol']:g}, atol "
            f"{ds.attrs['solver_atol']:g}): {ds.attrs['solver_nsteps_mean']:.0f} steps and "
            f"{ds.attrs['solver_nfev_mean']:.0f} RHS evaluations per patient on average"
        )
    ok = ds.status.values == 0
    for o in ds.output.values:
        cm = ds.cmax.sel(output=o).values[ok]
        unit = str(ds.output_units.sel(output=o).item()) if "output_units" in ds.coords else "ng/mL"
        _echo(
            f"{o:>16}: Cmax median {np.median(cm):.4g} {unit} "
            f"(5-95%: {np.percentile(cm, 5):.4g}-{np.percentile(cm, 95):.4g})"
        )
        for w in ds.window.values if unit == "ng/mL" else ():
            a = ds.auc.sel(output=o, window=w).values[ok]
            _echo(
                f"{'':>16}  AUC {w}: median {np.median(a):.5g} ng*h/mL "
                f"(5-95%: {np.percentile(a, 5):.5g}-{np.percentile(a, 95):.5g})"
            )
        if "c_at" in ds:
            for a_name in ds["at"].values:
                v = ds.c_at.sel(output=o, at=a_name).values[ok]
                _echo(
                    f"{'':>16}  at {a_name}: median {np.median(v):.4g} {unit} "
                    f"(5-95%: {np.percentile(v, 5):.4g}-{np.percentile(v, 95):.4g})"
                )
    if "time_above" in ds:
        for lab in ds.threshold.values:
            v = ds.time_above.sel(threshold=lab).values[ok]
            _echo(
                f"time {lab}: median {np.median(v):.3g} h "
                f"(5-95%: {np.percentile(v, 5):.3g}-{np.percentile(v, 95):.3g})"
            )
    n_failed = int(ds.attrs["n_failed"])
    if n_failed:
        _echo(f"pkpd: warning: {n_failed} patients failed (see `status`)", err=True)
    if out_png and "band" in ds:
        from pkpd.output.io import atomic_outputs
        from pkpd.output.plot import plot_bands

        with atomic_outputs() as stage:
            stage(
                check_target(out_png, (".png", ".svg", ".pdf"), "--plot"),
                lambda tmp: plot_bands(ds, tmp, fmt=str(out_png).rsplit(".", 1)[-1]),
            )
        _echo(f"wrote {out_png}")
    if out:
        _echo(f"wrote {out}")
    _echo(
        f"simulated {n:,} patients in {ds.attrs['elapsed_s']:.2f} s "
        f"({ds.attrs['patients_per_second']:,.0f} patients/s)"
    )
    _echo(DISCLAIMER)


# ----------------------------------------------------------------------------- PD, racemic


def _short(text: str, n: int = 110) -> str:
    """First clause of a population description, at most `n` characters."""
    first = text.split(";")[0].strip()
    return first if len(first) <= n else first[: n - 3].rstrip() + "..."


def _head(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(4096)
    except OSError:
        return ""


def _no_cohort_pd(pd_names, pd_items, racemic) -> None:
    if pd_names or pd_items or racemic:
        raise click.BadParameter(
            "--pd, --pd-param and --racemic are for one patient in this version; for a "
            "cohort in racemic mg pass pkpd.inputs.stereo.racemic_to_s_ketamine(regimen) to "
            "pkpd.simulate_cohort",
            param_hint="--pd/--racemic",
        )


def _solver_line(ds) -> str:
    """One line naming the solver, and its work counters for the adaptive ones."""
    a = ds.attrs
    info = solvers.SOLVERS[a.get("solver_method", "exact")]
    if not info.adaptive:
        return f"solver: {info.name} ({info.summary})"
    line = (
        f"solver: {a['solver_method']} (rtol {a['solver_rtol']}, atol {a['solver_atol']}): "
        f"{a['solver_nsteps']} steps, {a['solver_nrejected']} rejected, "
        f"{a['solver_nfev']} RHS evaluations"
    )
    if a.get("solver_njev"):
        line += f", {a['solver_njev']} Jacobians"
    if a.get("solver_note"):
        line += f"; {a['solver_note']}"
    return line


def _method_options(method, rtol, atol) -> dict:
    """Keyword arguments of pkpd.simulate for --method, --rtol and --atol."""
    out: dict = {"method": method}
    for name, v in (("rtol", rtol), ("atol", atol)):
        if v is None:
            continue
        if method in solvers.SOLVERS and not solvers.SOLVERS[method].adaptive:
            usable = [*solvers.ADAPTIVE, "auto"]
            raise click.BadParameter(
                f"only for --method {', '.join(usable[:-1])} or {usable[-1]}",
                param_hint=f"--{name}",
            )
        if not (v > 0 and np.isfinite(v)):
            raise click.BadParameter(f"{v!r}: must be a positive number", param_hint=f"--{name}")
        out[name] = v
    return out


def _pd_run_options(pd_names, pd_items, racemic) -> dict:
    """Keyword arguments of pkpd.simulate for --pd, --pd-param and --racemic."""
    out: dict = {}
    if pd_names:
        out["pd"] = list(pd_names)
    if pd_items:
        if not pd_names:
            raise click.BadParameter("needs --pd ENDPOINT", param_hint="--pd-param")
        vals = {}
        for item in pd_items:
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise click.BadParameter(
                    f"{item!r}: expected ENDPOINT.PARAM=VALUE", param_hint="--pd-param"
                )
            k, v = item.split("=", 1)
            vals[k.strip()] = v.strip()
        out["pd_parameters"] = vals
    if racemic:
        out["racemic"] = True
    return out


def _echo_pd_summary(ds, extra_run) -> None:
    """Range of every PD variable over the output grid, and the racemic caveat."""
    if extra_run.get("racemic"):
        _echo(f"dose conversion: {ds.attrs['dose_conversion']}")
        _echo(f"  caveats: {ds.attrs['dose_conversion_caveats']}")
    for name in (ds.attrs.get("pd_endpoints") or "").split(", "):
        if not name:
            continue
        _echo(f"PD {name}: {ds.attrs[f'pd_{name}']}")
        for v in ds.data_vars:
            if ds[v].attrs.get("pd_endpoint") == name and not v.startswith(("ce_", "auc_")):
                y = ds[v].values
                _echo(f"  {v}: min {y.min():.4g}, max {y.max():.4g} {ds[v].attrs.get('units', '')}")


# ------------------------------------------------------------------ compare, design, report


def _windows_option(windows) -> dict | None:
    win = {}
    for name, span in _pairs(windows, "--window").items():
        if ".." not in span:
            raise click.BadParameter(f"{span!r}: expected START..END", param_hint="--window")
        a, b = span.split("..", 1)
        win[name] = (a.strip(), b.strip())
    return win or None


def _fmt_range(v) -> str:
    """'median (p5-p95)' of a (percentile,) array."""
    lo, med, hi = (float(x) for x in v)
    if not np.isfinite(med):
        return "-"
    return f"{med:.4g} ({lo:.4g}-{hi:.4g})"


def _compare_rows(cds) -> list[tuple[str, list[str]]]:
    """Rows (label, one cell per regimen) of the comparison table."""
    rows = []
    regs = list(cds.regimen.values)

    def cells(da):
        return [_fmt_range(da.sel(regimen=r).values) for r in regs]

    for o in cds.output.values:
        rows.append((f"Cmax {o} (ng/mL)", cells(cds.cmax.sel(output=o))))
        for w in cds.window.values:
            rows.append((f"AUC {o} {w} (ng*h/mL)", cells(cds.auc.sel(output=o, window=w))))
        if "c_at" in cds:
            for a in cds["at"].values:
                rows.append((f"{o} at {a} (ng/mL)", cells(cds.c_at.sel(output=o, at=a))))
    if "time_above" in cds:
        for t in cds.threshold.values:
            rows.append((f"time {t} (h)", cells(cds.time_above.sel(threshold=t))))
    rows.append(("total dose (mg/kg)", cells(cds.dose_per_kg)))
    rows.append(("total dose (mg)", cells(cds.dose)))

    def interval(name):
        out = []
        for r in regs:
            v = float(cds[name].sel(regimen=r))
            lo = float(cds[f"{name}_lo"].sel(regimen=r)) if f"{name}_lo" in cds else np.nan
            hi = float(cds[f"{name}_hi"].sel(regimen=r)) if f"{name}_hi" in cds else np.nan
            out.append(f"{100 * v:.3g}% ({100 * lo:.3g}-{100 * hi:.3g})")
        return out

    if "pta" in cds:
        rows.append((f"PTA [95% CI]: {cds.attrs.get('target', '')}", interval("pta")))
    for name in [r for r in str(cds.attrs.get("risks", "")).split(", ") if r]:
        rows.append((f"{name} incidence [95% interval]", interval(f"incidence_{name}")))
    rows.append(("failed patients", [str(int(cds.n_failed.sel(regimen=r))) for r in regs]))
    return rows


def _table(head: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    w0 = max(len(head[0]), *(len(r[0]) for r in rows))
    ws = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(head[1:])]
    cols = (h.rjust(w) for h, w in zip(head[1:], ws, strict=True))
    lines = ["  ".join([head[0].ljust(w0), *cols])]
    for lab, cells in rows:
        lines.append(
            "  ".join([lab.ljust(w0), *(c.rjust(w) for c, w in zip(cells, ws, strict=True))])
        )
    return lines


@main.command(help="Compare regimens on the same virtual patients (common random numbers).")
@click.argument("model")
@click.argument("regimens", nargs=-1, required=True)
@click.option("--population", required=True, help="Population name, file, or covariate .csv.")
@click.option("--patients", type=int, required=True, help="Patients per regimen.")
@click.option("--seed", type=int, default=0, show_default=True, help="One seed for every regimen.")
@click.option(
    "--target",
    help="PTA target, e.g. 'cp >= 50 ng/mL for 50% of end_of_surgery..end_of_surgery+24h'.",
)
@click.option("--risk", "risks", multiple=True, help="Risk model (repeatable; needs pkpd.risk).")
@click.option("--window", "windows", multiple=True, metavar="NAME=START..END", help="AUC window.")
@click.option("--threshold", "thresholds", multiple=True, metavar="OUTPUT=CONC")
@click.option("--at", "at_items", multiple=True, metavar="NAME=TIME")
@click.option("--anchors-from", "anchors", help="Regimen declaring events of one-line regimens.")
@click.option("--until", help="End of the common grid (default: 24 h after the latest dose).")
@click.option("--every", default="5 min", show_default=True, help="Grid step.")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Write the result (.nc).")
@click.option("--plot", "out_png", type=click.Path(dir_okay=False), help="Figure (.png/.svg/.pdf).")
def compare(
    model, regimens, population, patients, seed, target, risks, windows, thresholds, at_items,
    anchors, until, every, out, out_png,
) -> None:  # fmt: skip
    from pkpd.analysis.design import compare as run_compare
    from pkpd.output.io import atomic_outputs, check_target, write_netcdf

    targets = []
    if out:
        targets.append(("nc", check_target(out, (".nc",), "--out")))
    if out_png:
        targets.append(("png", check_target(out_png, (".png", ".svg", ".pdf"), "--plot")))
    thr: dict[str, list[str]] = {}
    for o, v in _pairs(thresholds, "--threshold").items():
        thr.setdefault(o, []).append(v)
    cds = run_compare(
        model, list(regimens), population, patients, seed, target=target, risks=risks,
        windows=_windows_option(windows), thresholds=thr or None,
        at=_pairs(at_items, "--at") or None, anchors=anchors, until=until, every=every,
    )  # fmt: skip
    _echo(f"model: {cds.attrs['model']} ({cds.attrs.get('model_drug', '')})")
    _echo(
        f"population: {cds.attrs['population']}, {patients:,} patients, seed {seed}: the same "
        "virtual patients for every regimen"
    )
    for r, t in zip(cds.regimen.values, cds.regimen_text.values, strict=True):
        _echo(f"  {r}: {t}")
    _echo("median (5-95%) over patients:")
    for line in _table(["metric", *map(str, cds.regimen.values)], _compare_rows(cds)):
        _echo(line)
    with atomic_outputs() as stage:
        for kind, path in targets:
            if kind == "nc":
                stage(path, lambda tmp: write_netcdf(cds, tmp))
            else:
                from pkpd.output.plot import plot_compare

                stage(path, lambda tmp, p=path: plot_compare(cds, tmp, fmt=p.suffix))
    for _kind, path in targets:
        _echo(f"wrote {path}")
    _echo(DISCLAIMER)


def _list_option(text, option, numeric=True) -> list | None:
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise click.BadParameter(f"{text!r}: expected comma-separated values", param_hint=option)
    if not numeric:
        return [float(x) if _is_number(x) else x for x in items]
    try:
        return [float(x) for x in items]
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected numbers, e.g. 0,0.1,0.2", param_hint=option
        ) from None


def _is_number(x: str) -> bool:
    try:
        float(x)
    except ValueError:
        return False
    return True


@main.command(help="Sweep bolus, rate and duration over a grid; best schedule under a risk limit.")
@click.argument("model")
@click.option("--population", required=True, help="Population name, file, or covariate .csv.")
@click.option("--patients", type=int, required=True, help="Patients per grid point.")
@click.option("--seed", type=int, default=0, show_default=True, help="One seed for every point.")
@click.option("--bolus", help="Bolus doses, mg/kg, e.g. 0,0.1,0.2.")
@click.option("--rate", help="Infusion rates, mg/kg/h, e.g. 0.05,0.1,0.2.")
@click.option("--duration", help="Infusion ends: hours or events, e.g. 4,end_of_surgery.")
@click.option("--template", help="One-line regimen with {bolus}, {rate}, {duration}.")
@click.option("--anchors-from", "anchors", help="Regimen declaring the events (end_of_surgery).")
@click.option("--target", help="PTA target, e.g. 'cp >= 50 ng/mL for 50% of 0h..end_of_surgery'.")
@click.option("--risk", help="Risk model (needs pkpd.risk).")
@click.option("--max-risk", type=float, help="Limit on the risk incidence (fraction, e.g. 0.05).")
@click.option("--window", "windows", multiple=True, metavar="NAME=START..END", help="AUC window.")
@click.option("--until", help="End of the common grid.")
@click.option("--every", default="5 min", show_default=True, help="Grid step.")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Write the grid (.nc).")
@click.option(
    "--plot", "out_png", type=click.Path(dir_okay=False), help="Heatmaps (.png/.svg/.pdf)."
)
def design(
    model, population, patients, seed, bolus, rate, duration, template, anchors, target, risk,
    max_risk, windows, until, every, out, out_png,
) -> None:  # fmt: skip
    from pkpd.analysis.design import design as run_design
    from pkpd.output.io import atomic_outputs, check_target, write_netcdf

    targets = []
    if out:
        targets.append(("nc", check_target(out, (".nc",), "--out")))
    if out_png:
        targets.append(("png", check_target(out_png, (".png", ".svg", ".pdf"), "--plot")))
    gds = run_design(
        model, population, patients, seed, bolus=_list_option(bolus, "--bolus"),
        rate=_list_option(rate, "--rate"), duration=_list_option(duration, "--duration", False),
        template=template, anchors=anchors, target=target, risk=risk, max_risk=max_risk,
        windows=_windows_option(windows), until=until, every=every,
    )  # fmt: skip
    dims = list(gds.regimen.dims)
    _echo(
        f"model: {gds.attrs['model']}; population: {gds.attrs['population']}, "
        f"{patients:,} patients per point, seed {seed} (the same patients at every point)"
    )
    shape = " x ".join(f"{d} ({gds.sizes[d]})" for d in dims)
    _echo(f"grid: {shape} = {gds.regimen.size} regimens")
    if gds.attrs.get("target"):
        _echo(f"target: {gds.attrs['target']}")
    rname = gds.attrs.get("risk") or ""
    if "pareto" in gds:
        _echo("Pareto front (max PTA, min risk):")
        rows = []
        for idx in zip(*np.nonzero(gds.pareto.values), strict=True):
            pt = gds.isel(dict(zip(dims, idx, strict=True)))
            rows.append(
                (str(pt.regimen.values), [f"{100 * float(pt.pta):.3g}%",
                 f"{100 * float(pt[f'incidence_{rname}']):.3g}%",
                 f"{100 * float(pt[f'incidence_{rname}_hi']):.3g}%",
                 f"{float(pt.total_dose):.3g}"])
            )  # fmt: skip
        rows.sort(key=lambda r: float(r[1][1].rstrip("%")))
        for line in _table(["regimen", "PTA", rname, f"{rname} 95% hi", "mg/kg"], rows):
            _echo("  " + line)
    elif "pta" in gds:
        _echo("PTA over the grid:")
        rows = [
            (str(gds.regimen.values[i]), [f"{100 * float(gds.pta.values[i]):.3g}%",
             f"{float(gds.total_dose.values[i]):.3g}"])
            for i in np.ndindex(gds.pta.shape)
        ]  # fmt: skip
        for line in _table(["regimen", "PTA", "mg/kg"], rows):
            _echo("  " + line)
    _echo(gds.attrs["best_message"])
    with atomic_outputs() as stage:
        for kind, path in targets:
            if kind == "nc":
                stage(path, lambda tmp: write_netcdf(gds, tmp))
            else:
                from pkpd.output.plot import plot_design

                stage(path, lambda tmp, p=path: plot_design(gds, tmp, fmt=p.suffix))
    for _kind, path in targets:
        _echo(f"wrote {path}")
    _echo(DISCLAIMER)


@main.command(help="Write a self-contained HTML report of a result (.nc or .zarr).")
@click.argument("result", type=click.Path(exists=True))
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="HTML file.")
def report(result, out) -> None:
    from pkpd.output.io import atomic_outputs, check_target
    from pkpd.output.report import write_report

    target = check_target(out, (".html", ".htm"), "--out")
    with atomic_outputs() as stage:
        stage(target, lambda tmp: write_report(result, tmp))
    _echo(f"wrote {target}")
    _echo(DISCLAIMER)


if __name__ == "__main__":  # pragma: no cover
    main()
