"""The ``pkpd`` command.

Research software for pharmacology and protocol design: not a clinical dosing device.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from typing import NoReturn

import click

# The library modules the commands call are lazy stand-ins (pkpd/_lazy.py), imported when a
# command first uses them: `pkpd --help` and the catalogue commands start without numba,
# xarray, scipy or pandas (issue 15). Names are looked up in the module at each call
# (``cohorts.simulate_cohort``, ``result_io.write_netcdf``), as when these imports lived
# inside the commands. Only light modules are imported here: the version, the disclaimer
# and the exception classes the one-line error handling catches.
from pkpd._lazy import lazy_module
from pkpd._version import __version__
from pkpd.cache import cache_root
from pkpd.disclaimer import DISCLAIMER
from pkpd.engine.solvers import SOLVER_NAMES
from pkpd.errors import PkpdError, PkpdWarning

np = lazy_module("numpy")
designs = lazy_module("pkpd.analysis.design")
risk_analysis = lazy_module("pkpd.analysis.risk")
solvers = lazy_module("pkpd.engine.solvers.registry")
catalogue = lazy_module("pkpd.inputs.catalogue")
model_files = lazy_module("pkpd.inputs.model")
pd_files = lazy_module("pkpd.inputs.pd")
demand_files = lazy_module("pkpd.inputs.demand")
population_files = lazy_module("pkpd.inputs.population")
regimen_files = lazy_module("pkpd.inputs.regimen")
quantities = lazy_module("pkpd.inputs.units")
result_io = lazy_module("pkpd.output.io")
nonmem_tables = lazy_module("pkpd.output.nonmem")
patient_tables = lazy_module("pkpd.output.patient_table")
plots = lazy_module("pkpd.output.plot")
reports = lazy_module("pkpd.output.report")
tables = lazy_module("pkpd.output.tables")
cohorts = lazy_module("pkpd.running.cohort")
ahead = lazy_module("pkpd.running.compile_ahead")
resources = lazy_module("pkpd.running.resources")
single = lazy_module("pkpd.running.simulate")
tci_performances = lazy_module("pkpd.analysis.tci_performance")
pump = lazy_module("pkpd.running.tci")

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


# The library's messages name its Python arguments (`n`, `thresholds`, ...): the command
# names the options that set them instead. Only exact back-quoted argument names are
# replaced, never a file's key (those follow "FILE.toml: " or contain a dot we do not know).
_CLI_OPTIONS = {
    "n": "--patients",
    "thresholds": "--threshold",
    "ranges": "--range",
    "windows": "--window",
    "at": "--at",
    "racemic": "--racemic",
    "pd": "--pd",
    "pd_parameters": "--pd-param",
    "population": "--population",
    "seed": "--seed",
    "rtol": "--rtol",
    "atol": "--atol",
    "chunk_size": "--chunk-size",
    "threads": "--threads",
    "trajectories": "--trajectories",
}
_CLI_REWORDS = (
    # "`anchor_times` (CLI --anchor)": the library already names the option; keep only it.
    (re.compile(r"`[\w.]+` \(CLI:? (--[\w-]+)\)"), r"\1"),
    (re.compile(r"pass anchors=\{'[^']*': \.\.\.\} \(CLI: (--anchor [^)]+)\)"), r"pass \1"),
    (re.compile(r"pass n <= "), "pass --patients <= "),
    (re.compile(r"\(pass `(weight|age|sex)` to silence this\)"), r"(pass --\1 to silence this)"),
    (
        re.compile(r"\(pass `([\w.-]+)` to silence this\)"),
        r"(pass --covariate \1=VALUE to silence this)",
    ),
    # The memory refusal: the CLI keeps trajectories on the --every grid.
    (
        re.compile(r"keep fewer trajectories or a coarser trajectory_every"),
        "keep fewer trajectories (--trajectories) or use a coarser --every",
    ),
    # `every` and `until` of the output grid, not those of a repeated bolus ("the interval
    # `every`", "`until`, `for` and `count`").
    (
        re.compile(r"(?<!interval )(?<!\.toml: )`(every|until)`(?: =)?(?! <)(?!,)(?=[ )]|$)"),
        lambda m: f"--{m.group(1)}",
    ),
    (re.compile(r"; method=('\w+')"), r"; --method \1"),
    (
        re.compile(
            r"(?<!\.toml: )(?<!\.csv: )`(" + "|".join(_CLI_OPTIONS) + r")(?:\.([\w-]+))?`( =)?"
        ),
        lambda m: _CLI_OPTIONS[m.group(1)] + (f" {m.group(2)}" if m.group(2) else ""),
    ),
)


def _cli_words(message: str) -> str:
    """A library message as the command's user reads it: options instead of arguments."""
    for pattern, repl in _CLI_REWORDS:
        message = pattern.sub(repl, message)
    return message


def _click_error(exc: click.ClickException) -> NoReturn:
    """click's own errors (unknown option, missing argument, bad choice) in one line."""
    msg = exc.format_message()
    usage = isinstance(exc, click.UsageError) and not isinstance(exc, click.BadParameter)
    if usage or isinstance(exc, click.MissingParameter):
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
        if main_thread and hasattr(signal, "pthread_sigmask"):
            # A parent may start us with SIGINT or SIGTERM blocked (the mask is inherited:
            # a Python parent whose libraries blocked them, as in the test suite): they
            # would stay pending and the run could not be interrupted or cleaned up.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            # The command's warnings are collected and each distinct one printed once, with
            # its count (a design grid repeats one covariate warning per point), before any
            # error; the filters set in `main` end with the command.
            with warnings.catch_warnings(record=True) as caught:
                try:
                    return super().invoke(ctx)
                finally:
                    _report_warnings(caught)
        except BrokenPipeError:
            # Output piped into a program that stopped reading (e.g. `| head`): not an error.
            sys.stdout = open(os.devnull, "w")
            sys.exit(0)
        except (PkpdError, ValueError, OSError) as exc:
            _fail(_cli_words(str(exc)))
        except Warning as exc:
            # A warning the user turned into an error (PYTHONWARNINGS=error, python -W).
            _fail(f"{type(exc).__name__}: {exc}")
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
    _echo(f"pkpd: {prefix}: {_cli_words(str(message))}", err=True)


def _report_warnings(caught) -> None:
    """Each distinct warning of the command once, in order of first appearance, with the
    number of times it was raised when more than once (a run's own log raises a repeated
    warning once with its count: :class:`pkpd.running.warning_log.WarningLog` adds them)."""
    if not caught:
        return  # (`--help` and the like: nothing to import)
    from pkpd.running.warning_log import WarningLog, with_count

    for category, message, n in WarningLog(caught).merged():
        _showwarning(with_count(message, n), category, "", 0)


@click.group(
    cls=_Group,
    help=f"""Simulate perioperative ketamine and S-ketamine infusions.

\b
{DISCLAIMER}

\b
Examples:
  pkpd models
  pkpd models show fanta2015_otto2021
  pkpd regimens show lumbar_fusion_esketamine
  pkpd simulate fanta2015_otto2021 "0.2 mg/kg bolus at 0 h; 0.125 mg/kg/h from 0 h to 4 h" \\
       --weight 70 --until 24h --out result.nc --plot result.png
""",
)
@click.version_option(__version__, prog_name="pkpd")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Do not print the package's warnings (covariate defaults and ranges, sampling "
    "site, provenance...); errors are still printed.",
)
def main(debug: bool, quiet: bool = False) -> None:
    global _DEBUG
    _DEBUG = debug
    # The command reports the package's warnings on stderr, each distinct one once with its
    # count (_Group.invoke collects them). Filters the user set for the process
    # (PYTHONWARNINGS, python -W: sys.warnoptions) are theirs to keep, `PYTHONWARNINGS=ignore`
    # included; otherwise every occurrence of the package's warnings is collected (to be
    # counted), never turned into an error by filters of a calling process; --quiet drops them.
    if quiet:
        warnings.simplefilter("ignore", PkpdWarning)
    elif not sys.warnoptions:
        warnings.simplefilter("always", PkpdWarning)


# ----------------------------------------------------------------------------- models


@main.group(invoke_without_command=True, help="List the shipped models, or show one.")
@click.pass_context
def models(ctx) -> None:
    if ctx.invoked_subcommand is None:
        _echo_models()


@models.command("list", help="List the shipped models and PD endpoints (as `pkpd models`).")
def models_list() -> None:
    _echo_models()


def _echo_models() -> None:
    rows = []
    pops = {}
    for name in model_files.available_models():
        m = model_files.load_model(name)
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
    _echo_demand_table()
    _echo("\nPopulations and caveats: pkpd models show NAME")


def _echo_demand_table() -> None:
    """PCA demand models (models/demand) under the PD table of `pkpd models`."""
    rows = []
    for name in demand_files.available_demands():
        d = demand_files.load_demand(name)
        rows.append((name, d.drug, f"{d.output} of {d.pk_model}", f"{len(d.assumed)} assumed",
                     d.title))  # fmt: skip
    if not rows:
        return
    head = ("PCA demand model", "drug", "relief by", "verification")
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(4)]
    _echo("\n" + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  title")
    for r in rows:
        _echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + f"  {r[4]}")


def _echo_pd_table() -> None:
    """PD endpoints (models/pd) under the PK table of `pkpd models`."""
    rows = pd_files.list_rows()
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
    if name in pd_files.available_pd() or (name.endswith(".toml") and "[endpoint]" in _head(name)):
        for line in pd_files.describe(name):
            _echo(line)
        return
    if name in demand_files.available_demands() or (
        name.endswith(".toml") and "[demand]" in _head(name)
    ):
        for line in demand_files.load_demand(name).describe():
            _echo(line)
        return
    m = model_files.load_model(name)
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
            elif e.type == "additive_above":
                scale += f" + {e.coefficient:g} x max(0, {e.covariate} - {e.reference:g})"
            else:
                scale += f" x {e.type}({e.covariate}, ref {e.reference:g}, {e.coefficient:g})"
        unit = {"volume": "L", "clearance": "L/h", "rate_constant": "1/h", "time": "h"}.get(
            p.kind, ""
        )
        _echo(f"  {p.name:<6} {p.unit_text:<14} = {p.value:.6g} {unit}{scale}")
        _echo(f"         [{model_files.TAGS[p.source.tag]}] {p.source.reference}")
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
                    f"[{model_files.TAGS[v.source.tag]}] {v.source.reference}"
                )
                continue
            cv = np.sqrt(np.expm1(np.diag(v.omega))) * 100
            cvs = ", ".join(f"{p} {c:.1f}%" for p, c in zip(v.parameters, cv, strict=True))
            _echo(
                f"  {', '.join(v.parameters)}: omega^2 {v.omega.tolist()} "
                f"(CV {cvs}) [{model_files.TAGS[v.source.tag]}]"
            )
    else:
        _echo("\ninter-individual variability: none in the model file (typical patients only)")
    if m.residual:
        _echo("\nresidual error:")
        for r in m.residual.values():
            parts = []
            if r.proportional_sd:
                parts.append(f"proportional SD {r.proportional_sd:g}")
            if r.additive_sd:
                parts.append(f"additive SD {r.additive_sd * 1000:g} ng/mL")
            _echo(f"  {r.output}: {r.type}, {', '.join(parts)} [{model_files.TAGS[r.source.tag]}]")
    units = model_files.output_scales(m)[1]
    _echo(
        "\noutputs: " + ", ".join(f"{o} ({u})" for o, u in zip(m.output_names, units, strict=True))
    )


@main.group(invoke_without_command=True, help="List the shipped cohort populations, or show one.")
@click.pass_context
def populations(ctx) -> None:
    if ctx.invoked_subcommand is None:
        _echo_populations()


@populations.command("list", help="List the shipped populations (as `pkpd populations`).")
def populations_list() -> None:
    _echo_populations()


def _echo_populations() -> None:
    for name in population_files.available_populations():
        pop = population_files.load_population(name)
        _echo(f"{name:<28} {pop.description.splitlines()[0] if pop.description else ''}")
    _echo("\nDetails and sources: pkpd populations show NAME")


@populations.command("show", help="Distributions of one population with their sources.")
@click.argument("name")
def populations_show(name: str) -> None:
    _echo(population_files.load_population(name).describe())


# ----------------------------------------------------------------------------- regimens, PD


def _echo_rows(head: tuple[str, ...], rows, footer: str) -> None:
    """A table whose last column is free text (not padded), then a hint line."""
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(len(head) - 1)]
    for r in [head, *rows]:
        _echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + f"  {r[-1]}")
    _echo(f"\n{footer}")


@main.group(invoke_without_command=True, help="List the shipped regimens, or show one.")
@click.pass_context
def regimens(ctx) -> None:
    if ctx.invoked_subcommand is None:
        _echo_regimens()


@regimens.command(
    "list",
    help="One line per shipped regimen: name, drug, description.",
    short_help="One line per shipped regimen.",
)
def regimens_list() -> None:
    _echo_regimens()


def _echo_regimens() -> None:
    rows = [(n, d, _short(t, 90)) for n, d, t in catalogue.regimen_rows()]
    _echo_rows(
        ("name", "drug", "description"),
        rows,
        "Doses, events and sources: pkpd regimens show NAME; use one: pkpd simulate MODEL NAME",
    )


@regimens.command(
    "show",
    help="Doses of one regimen in the one-line form, its events (anchors) and sources.",
    short_help="Doses, events and sources of one regimen.",
)
@click.argument("name")
def regimens_show(name: str) -> None:
    for line in catalogue.describe_regimen(name):
        _echo(line)


@main.group("pd", invoke_without_command=True, help="List the shipped PD endpoints, or show one.")
@click.pass_context
def pd_group(ctx) -> None:
    if ctx.invoked_subcommand is None:
        _echo_pd()


@pd_group.command(
    "list",
    help="One line per shipped PD endpoint: drug, sampling, effect.",
    short_help="One line per shipped PD endpoint.",
)
def pd_list() -> None:
    _echo_pd()


def _echo_pd() -> None:
    _echo_rows(
        ("name", "drug", "sampling", "effect", "verification", "source"),
        pd_files.list_rows(),
        "Parameters and sources: pkpd pd show NAME; use one: pkpd simulate MODEL REGIMEN --pd NAME",
    )


@pd_group.command(
    "show",
    help="Parameters of one PD endpoint with units, sources and tags.",
    short_help="Parameters, sources and tags of one endpoint.",
)
@click.argument("name")
def pd_show(name: str) -> None:
    for line in pd_files.describe(name):
        _echo(line)


# ----------------------------------------------------------------------------- simulate


#: How the summary header words each verification tag of a model's parameters.
_TAG_WORDS = {
    "paper": "from the paper",
    "code": "verified in cited code",
    "code-unconfirmed": "from uncited code",
    "derived": "derived",
    "assumed": "assumed",
}


def _model_line(spec, parameters: bool = True) -> str:
    """``model: NAME (drug; sampling site; parameters: 10 verified in cited code)``."""
    site = spec.sampling_site
    if site == "not reported":
        site = "sampling site not reported"
    elif site.startswith("plasma"):
        site = "plasma samples (site not stated)"
    else:
        site = f"{site} samples"
    parts = [spec.drug, site]
    if parameters:
        counts: dict[str, int] = {}
        for p in spec.parameters.values():
            counts[p.source.tag] = counts.get(p.source.tag, 0) + 1
        parts.append(
            "parameters: " + ", ".join(f"{n} {_TAG_WORDS.get(t, t)}" for t, n in counts.items())
        )
    return f"model: {spec.name} ({'; '.join(parts)})"


def _covariates(weight, age, sex, extra) -> dict:
    cov: dict = {}
    if weight is not None:
        cov["weight"] = quantities.parse_quantity(
            weight, "weight", default_unit="kg", key="--weight"
        ).value
    if age is not None:
        cov["age"] = quantities.parse_quantity(age, "age", default_unit="year", key="--age").value
    for name, text in (("weight", weight), ("age", age)):
        why = population_files.implausible(name, cov.get(name))
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


class _NegativeValuesCommand(click.Command):
    """A command that lets a value starting with '-' through (ignore_unknown_options: a
    regimen such as "-5 mg bolus at 0 h" must reach the regimen parser and its clear error)
    but still refuses a misspelled long option by name, with click's "did you mean", instead
    of "unexpected extra arguments"."""

    def parse_args(self, ctx, args):
        known = {o for p in self.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
        for a in args:
            if a == "--":
                break
            name = a.split("=", 1)[0]
            if name.startswith("--") and len(name) > 2 and name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.75)
                raise click.NoSuchOption(name, possibilities=close, ctx=ctx)
        return super().parse_args(ctx, args)


# ignore_unknown_options: a regimen such as "-5 mg bolus at 0 h" must reach the regimen
# parser (and its clear error), not be taken for an option.
@main.command(
    cls=_NegativeValuesCommand,
    context_settings={"ignore_unknown_options": True},
    help="""Simulate one patient exactly and print an exposure summary.

\b
MODEL    a shipped model name (see `pkpd models`) or a model .toml file
REGIMEN  a regimen .toml file or the one-line form, e.g.
         "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 48 h"
""",
)
@click.argument("model")
@click.argument("regimen", required=False)
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
    "--patients-table",
    "patients_table",
    type=click.Path(dir_okay=False),
    help="Cohort: write one row per patient (covariates, event times, individual parameters, "
    "every metric; units in the column names) as .csv or .parquet, metadata in "
    "FILE.meta.json.",
)
@click.option(
    "--nonmem",
    "out_nonmem",
    type=click.Path(dir_okay=False),
    help="Cohort: write a NONMEM-style event table (.csv: ID,TIME,AMT,RATE,EVID,CMT,DV,MDV "
    "and covariates; doses, and observations at --observe times with residual error).",
)
@click.option(
    "--observe",
    metavar="TIMES",
    help="Observation times of --nonmem, comma-separated, e.g. 0.5h,1h,2h,4h,8h,24h.",
)
@click.option(
    "--events",
    "events_file",
    type=click.Path(dir_okay=False),
    help="Read doses, covariates and observation times per patient from a NONMEM-style "
    "event table (.csv) instead of REGIMEN; --csv writes the predictions.",
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
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Random seed: of a cohort, or of one patient's PCA demands.",
)
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
    help="AUC window, e.g. postop24=end_of_surgery..end_of_surgery+24h (repeatable).",
)
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    metavar="OUTPUT=LEVEL",
    help="Time above a level, e.g. cp=100ng/mL, or a PD variable in its "
    "unit, e.g. simons2022_drug_high_conc_over_c50=1 (repeatable).",
)
@click.option(
    "--range",
    "ranges",
    multiple=True,
    metavar="OUTPUT=LOW..HIGH",
    help="Time within a range, e.g. cp=50..150ng/mL (low <= c <= high; repeatable).",
)
@click.option(
    "--at",
    "at_items",
    multiple=True,
    metavar="NAME=TIME",
    help="Value at a named time, e.g. eos1h=end_of_surgery+1h (repeatable).",
)
@click.option(
    "--target",
    "target",
    multiple=True,
    help="Cohort: PTA target with its 95% interval, e.g. 'cp >= 50 ng/mL for 50% of "
    "0h..end_of_surgery' or 'cp within 50..150 ng/mL for 50%' (one).",
)
@click.option(
    "--risk",
    "risks",
    multiple=True,
    help="Cohort: side-effect risk model (see models/risk, e.g. psychotomimetic): incidence "
    "with its 95% interval and calibration-domain flags (repeatable).",
)
@click.option(
    "--max-risk", type=float, help="Cohort: limit on the --risk incidence (fraction, e.g. 0.1)."
)
@click.option(
    "--risk-rule",
    help="How --max-risk is read: upper (the 97.5% quantile, upper end of the 95% interval; "
    "the default), mean, or a quantile q50/q75/q90/q95.",
)
@click.option(
    "--allow-extrapolation",
    is_flag=True,
    help="Let a cohort outside the risk model's calibration domain meet --max-risk.",
)
@click.option(
    "--tci-performance",
    "tci_perf",
    is_flag=True,
    help="Cohort with a TCI regimen: how the pump's model predicts the patients while it runs "
    "(MDPE, MDAPE, wobble, divergence; Varvel 1992).",
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
    "--plot-window",
    "plot_window",
    metavar="START..END",
    help="Time axis of --plot: hours, times or events, e.g. 0..6h or "
    "0..end_of_surgery+2h (a cohort's event at its median over patients).",
)
@click.option("--plot-log", is_flag=True, help="Logarithmic concentration axis of --plot.")
@click.option(
    "--method",
    type=click.Choice(["auto", *SOLVER_NAMES]),
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
    help="Evaluate a PD endpoint (see `pkpd models`; repeatable); with --patients its "
    "effect sites and PD variables are cohort outputs.",
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
@click.option(
    "--bolus-over",
    metavar="DURATION",
    help="Give every instantaneous bolus over this injection time, e.g. 1min (the default "
    "instantaneous bolus peaks at dose / V1, a mixing artefact no sample measures).",
)
def simulate(
    model, regimen, weight, age, sex, extra, anchor_items, until, every, out_nc, out_csv,
    patients, population, seed, trajectories, windows, thresholds, at_items, no_iiv, no_bands,
    chunk_size, threads, dask, out_png, method="auto", rtol=None, atol=None, pd_names=(),
    pd_items=(), racemic=False, amounts=False, trajectory_dtype="float32",
    extra_columns="error", bolus_over=None, patients_table=None, out_nonmem=None,
    observe=None, events_file=None, ranges=(), plot_window=None, plot_log=False, target=(),
    risks=(), max_risk=None, risk_rule=None, allow_extrapolation=False, tci_perf=False,
) -> None:  # fmt: skip
    plot_opts = _plot_options(out_png, plot_window, plot_log)
    limit = _limit_options(risks, max_risk, risk_rule, allow_extrapolation)
    if events_file is not None:
        _check_events_options(regimen, patients, population, target, risks)
        _simulate_events(model, events_file, out_csv)
        return
    if regimen is None:
        raise click.BadParameter("expected a REGIMEN (or --events FILE.csv)", param_hint="REGIMEN")
    if (out_nonmem is None) != (observe is None):
        raise click.BadParameter(
            "--nonmem FILE.csv and --observe TIMES go together", param_hint="--nonmem"
        )
    if bolus_over is not None:
        regimen = _bolus_over(regimen, bolus_over)
    if patients is not None or population is not None:
        _check_cohort_options(out_csv, (weight, age, sex, extra, anchor_items))
        _simulate_cohort(
            model, regimen, patients, population, seed, until, every, out_nc, trajectories,
            windows, thresholds, at_items, no_iiv, no_bands, chunk_size, threads, dask, out_png,
            {
                **_method_options(method, rtol, atol),
                "amounts": amounts,
                "trajectory_dtype": trajectory_dtype,
                "extra_columns": extra_columns,
                "ranges": _ranges_option(ranges),
                **_pd_run_options(pd_names, pd_items, racemic),
            },
            patients_table=patients_table,
            nonmem=(out_nonmem, observe, racemic),
            plot_opts=plot_opts,
            outcomes=(_one(target, "--target"), risks, limit),
            tci_perf=tci_perf,
        )  # fmt: skip
        return
    if tci_perf:
        raise click.BadParameter("is for cohorts: add --patients N --population P",
                                 param_hint="--tci-performance")  # fmt: skip
    _check_single_options(target, risks, out_nonmem, patients_table, extra_columns, amounts)
    targets = _single_targets(out_nc, out_csv, out_png)
    spec = model_files.load_model(model)
    anchors = _anchors_option(anchor_items)
    reg = regimen_files.load_regimen(regimen).resolve(anchors)
    plot_events = plots.regimen_events(regimen_files.load_regimen(regimen), anchors)
    _check_window_events(plot_opts, plot_events)
    cov = _covariates(weight, age, sex, extra)
    extra_run = _pd_run_options(pd_names, pd_items, racemic)
    extra_run.update(_method_options(method, rtol, atol))
    # The command holds two simulations (the output grid, and that grid merged with the dose
    # events) and copies for its files: each may use a quarter of the available memory.
    extra_run["memory_limit"] = int(0.8 * resources.available_memory()) // _SINGLE_COPIES
    metrics = {
        "windows": _windows_option(windows),
        "at": _pairs(at_items, "--at") or None,
        "thresholds": _cohort_thresholds(thresholds) or None,
        "ranges": _ranges_option(ranges),
    }
    # The regimen with its events unresolved, so that windows and times may refer to them.
    extra_run["seed"] = seed  # a PCA pump's demand stream
    ds = single.simulate(
        spec, regimen_files.load_regimen(regimen), covariates=cov, until=until, every=every,
        anchors=anchors, **extra_run, **metrics,
    )  # fmt: skip
    fine = _simulate_at_doses(ds, spec, reg, cov, extra_run)
    _echo_single(spec, reg, ds, fine, extra_run)
    _write_single(targets, ds, plot_events, plot_opts)
    for _kind, path in targets:
        _echo(f"wrote {path}")
    _echo(DISCLAIMER)


def _check_events_options(regimen, patients, population, target, risks) -> None:
    """--events: the event table holds the doses and the patients, one by one (no
    REGIMEN, cohort or probability)."""
    if regimen is not None or patients is not None or population is not None:
        raise click.BadParameter(
            "the event table holds the doses and the patients: give MODEL and --events "
            "only (no REGIMEN, --patients or --population)", param_hint="--events",
        )  # fmt: skip
    if target or risks:
        raise click.BadParameter(
            "a probability needs a cohort (--patients N --population P); an event table "
            "is simulated patient by patient", param_hint="--target" if target else "--risk",
        )  # fmt: skip


def _check_cohort_options(out_csv, one_patient) -> None:
    """A cohort has no CSV output and draws its covariates and event times: `one_patient`
    (--weight, --age, --sex, --covariate and --anchor) must not be given."""
    if out_csv:
        raise click.BadParameter(
            "CSV output is for one patient; use --out FILE.nc or FILE.zarr for a cohort",
            param_hint="--csv",
        )
    if any(one_patient):
        raise click.BadParameter(
            "a cohort draws its covariates and event times from "
            "--population and the regimen file; --weight, --age, "
            "--sex, --covariate and --anchor are for one patient",
            param_hint="--population",
        )


def _check_single_options(target, risks, out_nonmem, patients_table, extra_columns, amounts):
    """One patient: the options that are for cohorts are refused."""
    if target or risks:
        raise click.BadParameter(
            "a probability needs a cohort: add --patients N --population P (one patient "
            "either attains the target or not, and has no incidence)",
            param_hint="--target" if target else "--risk",
        )
    if out_nonmem:
        raise click.BadParameter(
            "is for a cohort (--patients N --population P)", param_hint="--nonmem"
        )
    if patients_table:
        raise click.BadParameter(
            "is for a cohort (--patients N --population P); one patient's values are in "
            "--out FILE.nc or --csv FILE.csv", param_hint="--patients-table",
        )  # fmt: skip
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


def _echo_single(spec, reg, ds, fine, extra_run) -> None:
    """One patient's summary: the model, regimen, covariates and solver, the exposure of
    `fine` (the run merged with the dose events), the PD summary and the metrics of `ds`."""
    summ = single.summarize(fine, reg)
    _echo(_model_line(spec))
    for line in tables.companion_lines(ds):
        _echo(line)
    _echo(f"regimen: {reg.name + ': ' if reg.name else ''}{reg.text}")
    _echo(f"covariates: {ds.attrs['covariates']}")
    _echo(_solver_line(ds))
    if spec.assumed_parameters:
        _echo(f"assumed (not literature) values: {', '.join(spec.assumed_parameters)}")
    for line in summ.lines():
        _echo(line)
    _echo_pd_summary(fine, extra_run)
    for line in single.pca_lines(ds):
        _echo(line)
    for line in single.metric_lines(ds):
        _echo(line)


def _bolus_over(regimen, text):
    """The regimen with its instantaneous boluses given over the time `text` (--bolus-over)."""
    try:
        hours = quantities.parse_quantity(text, "time").value
    except PkpdError as exc:
        raise click.BadParameter(f"{text!r}: {exc}", param_hint="--bolus-over") from None
    if not hours > 0:
        raise click.BadParameter(f"{text!r}: expected a positive time", param_hint="--bolus-over")
    return regimen_files.with_bolus_duration(regimen, hours)


#: Simulations of one patient (and output copies of them) the command holds at once.
_SINGLE_COPIES = 4


def _single_targets(out_nc, out_csv, out_png) -> list[tuple[str, object]]:
    """(kind, path) of the files of one patient, checked before any work."""
    targets = []
    if out_nc:
        targets.append(("nc", result_io.check_target(out_nc, (".nc",), "--out")))
    if out_csv:
        targets.append(("csv", result_io.check_target(out_csv, (".csv",), "--csv")))
        # Provenance beside the CSV, so that the CSV itself is one header row + numbers.
        meta = result_io.csv_metadata_path(targets[-1][1])
        targets.append(("csv_meta", result_io.check_target(meta, (".json",), "--csv sidecar")))
    if out_png:
        targets.append(("png", result_io.check_target(out_png, _FIGURES, "--plot")))
    return targets


#: Figure formats of --plot.
_FIGURES = (".png", ".svg", ".pdf")


def _table_targets(path) -> list:
    """The per-patient table and its sidecar (--patients-table), checked before any work."""
    if not path:
        return []
    table = result_io.check_target(path, patient_tables.TABLE_SUFFIXES, "--patients-table")
    if table.suffix.lower() == ".parquet":
        patient_tables.check_parquet()
    meta = result_io.csv_metadata_path(table)
    return [table, result_io.check_target(meta, (".json",), "--patients-table sidecar")]


def _nonmem_targets(path, observe, racemic):
    """The event table (--nonmem) and its sidecar, and the --observe times (h)."""
    if not path:
        return [], None
    if racemic:
        raise click.BadParameter(
            "a NONMEM table's AMT is the modelled drug's mg: not with --racemic",
            param_hint="--nonmem",
        )
    times = []
    for item in observe.split(","):
        try:
            times.append(quantities.parse_quantity(item.strip(), "time", key="--observe").value)
        except PkpdError as exc:
            raise click.BadParameter(f"{item.strip()!r}: {exc}", param_hint="--observe") from None
    nonmem_tables.observation_step(times)  # whole seconds, not negative: checked now
    table = result_io.check_target(path, (".csv",), "--nonmem")
    meta = result_io.csv_metadata_path(table)
    return [table, result_io.check_target(meta, (".json",), "--nonmem sidecar")], times


def _simulate_events(model, events_file, out_csv) -> None:
    """`pkpd simulate MODEL --events FILE.csv`: each patient of the table, one by one."""
    targets = []
    if out_csv:
        targets = _single_targets(None, out_csv, None)
    spec = model_files.load_model(model)
    patients = nonmem_tables.read_events(events_file, spec)
    _echo(_model_line(spec, parameters=False))
    _echo(f"events: {events_file}, {len(patients)} patients")
    results = nonmem_tables.simulate_events(spec, patients)
    out = spec.output_names[0]
    for p, ds in zip(patients, results, strict=True):
        y = ds[out].values
        _echo(
            f"ID {p.id}: {len(p.regimen.doses)} doses, "
            f"{p.regimen.event_table().total_dose:.4g} mg; {out} at {y.size} observation "
            f"times: {np.min(y):.4g}-{np.max(y):.4g} {ds[out].attrs.get('units', '')}"
        )
    if targets:
        nonmem_tables.write_predictions(patients, results, targets[0][1], targets[1][1])
        for _kind, path in targets:
            _echo(f"wrote {path}")
    _echo(DISCLAIMER)


def _anchors_option(anchor_items) -> dict:
    anchors = {}
    for item in anchor_items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected EVENT=TIME", param_hint="--anchor")
        k, v = item.split("=", 1)
        anchors[k.strip()] = v.strip()
    return anchors


def _simulate_at_doses(ds, spec, reg, cov, extra_run):
    """The patient again on the output grid merged with every dose event, so that peaks at
    a bolus or at the end of an infusion are evaluated exactly (for the summary)."""
    grid = ds.time.values
    weight = cov.get(
        "weight", spec.covariates.get("weight").default if "weight" in spec.covariates else None
    )
    if reg.pca is not None:  # the pump's boluses, as this patient's run delivered them
        ev_t = reg.event_table(weight if reg.uses_weight else None, doses_only=True).t
        ev_t = np.union1d(ev_t, ds["pca_delivery_time"].values)
    elif reg.tci is None:
        ev_t = reg.event_table(weight if reg.uses_weight else None).t
    else:  # the pump's update times too (its loading ends on one of them)
        w = np.array([np.nan if weight is None else float(weight)])
        ev_t = pump.event_arrays(reg, w, None, cov)[0][0]
    fine_t = np.union1d(grid, ev_t[(ev_t >= grid[0]) & (ev_t <= grid[-1])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)  # already reported once above
        return single.simulate(spec, reg, covariates=cov, times=fine_t, **extra_run)


def _plot_options(out_png, plot_window, plot_log) -> dict:
    """``window``/``log`` of the plot functions from --plot-window/--plot-log, checked
    before any work (the syntax here; event names against the run's events)."""
    for given, option in ((plot_window, "--plot-window"), (plot_log, "--plot-log")):
        if given and not out_png:
            raise click.BadParameter("shapes the figure of --plot: add --plot FILE.png",
                                     param_hint=option)  # fmt: skip
    window = None
    if plot_window is not None:
        window = plots.TimeWindow.parse(plot_window, key="--plot-window")
    return {"window": window, "log": bool(plot_log)}


def _compare_event_names(regimens, anchors_from) -> set[str] | None:
    """Events of the regimens of `compare` (and of --anchors-from), for a check of
    --plot-window before the run; None if a regimen does not load (compare says why)."""
    names: set[str] = set()
    for r in [*regimens, *([anchors_from] if anchors_from else [])]:
        try:
            reg = regimen_files.load_regimen(r)
        except (PkpdError, OSError):
            return None
        names |= reg.anchor_names | {a.name for a in reg.anchors}
    return names


def _check_window_events(plot_opts, events) -> None:
    """Refuse, before the simulation, a --plot-window naming an event the run lacks."""
    window = plot_opts.get("window")
    if window is not None:
        window.check_events(events)


def _write_single(targets, ds, events, plot_opts) -> None:
    """Write the files of one patient, all or none."""
    with result_io.atomic_outputs() as stage:
        for kind, path in targets:
            if kind == "nc":
                stage(path, lambda tmp: result_io.write_netcdf(ds, tmp))
            elif kind == "csv":
                stage(path, lambda tmp: result_io.write_csv(ds, tmp))
            elif kind == "csv_meta":
                stage(path, lambda tmp: result_io.write_csv_metadata(ds, tmp))
            else:
                stage(
                    path,
                    lambda tmp, path=path: plots.plot_concentrations(
                        ds, tmp, events=events, fmt=path.suffix, **plot_opts
                    ),
                )


def _pairs(items, option, sep="="):
    out = {}
    for item in items:
        if sep not in item:
            raise click.BadParameter(f"{item!r}: expected NAME{sep}VALUE", param_hint=option)
        k, v = item.split(sep, 1)
        if k.strip() in out:
            # A second value for one name would silently replace the first.
            raise click.BadParameter(f"{k.strip()!r} is given twice", param_hint=option)
        out[k.strip()] = v.strip()
    return out


def _cohort_thresholds(thresholds) -> dict[str, list[str]]:
    """--threshold OUTPUT=LEVEL items of a cohort, grouped by output."""
    thr: dict[str, list[str]] = {}
    for o, v in (([*i.split("=", 1), ""])[:2] for i in thresholds):
        if not v:
            raise click.BadParameter(
                f"{o!r}: expected OUTPUT=CONC or PD_VARIABLE=LEVEL", param_hint="--threshold"
            )
        thr.setdefault(o.strip(), []).append(v.strip())
    return thr


def _ranges_option(ranges) -> dict[str, list[str]] | None:
    """--range OUTPUT=LOW..HIGH items, grouped by output (None if none)."""
    out: dict[str, list[str]] = {}
    for o, v in (([*i.split("=", 1), ""])[:2] for i in ranges):
        if not v or ".." not in v:
            raise click.BadParameter(
                f"{o!r}: expected OUTPUT=LOW..HIGH, e.g. cp=50..150ng/mL", param_hint="--range"
            )
        out.setdefault(o.strip(), []).append(v.strip())
    return out or None


def _simulate_cohort(
    model, regimen, patients, population, seed, until, every, out, trajectories, windows,
    thresholds, at_items, no_iiv, no_bands, chunk_size, threads, dask, out_png, method_options,
    patients_table=None, nonmem=(None, None, False), plot_opts=None,
    outcomes=(None, (), {}), tci_perf=False,
):  # fmt: skip
    if population is None:
        raise click.BadParameter(
            "a cohort needs --population (e.g. healthy_volunteers, or a covariate table .csv)",
            param_hint="--population",
        )
    if out:
        result_io.check_target(out, (".nc", ".zarr"), "--out")
    if out_png:
        result_io.check_target(out_png, _FIGURES, "--plot")
    table_targets = _table_targets(patients_table)
    nonmem_targets, observe = _nonmem_targets(*nonmem)
    pop = (
        population_files.CovariateTable.from_csv(population)
        if population.endswith(".csv")
        else population
    )
    if patients is None and not isinstance(pop, population_files.CovariateTable):
        raise click.BadParameter("how many patients? give --patients N", param_hint="--patients")
    win = _windows_option(windows)
    thr = _cohort_thresholds(thresholds)
    plot_opts = plot_opts or {}
    if plot_opts.get("window") is not None:
        _check_window_events(
            plot_opts, dict.fromkeys(regimen_files.load_regimen(regimen).anchor_names, 0.0)
        )
    spec = model_files.load_model(model)
    if nonmem_targets:
        nonmem_tables.check_model(spec)  # before the work, not after
    traj = None
    if trajectories:
        traj = True if trajectories == "all" else [t.strip() for t in trajectories.split(",")]
    traj = _tci_trajectories(regimen, spec, traj) if tci_perf else traj
    target, risks, limit = outcomes
    # PTA and risk need their thresholds or trajectories; a .nc is written once they are in.
    need = {"thresholds": thr, "ranges": method_options.pop("ranges", None), "trajectories": traj}
    outcomes_asked = target is not None or bool(risks)
    if outcomes_asked:
        need = designs.outcome_cohort_kwargs(target, risks, {k: v for k, v in need.items() if v})
    nc_later = outcomes_asked and out and str(out).lower().endswith(".nc")
    ds = cohorts.simulate_cohort(
        spec, regimen, pop, patients, seed, until=until, every=every, windows=win,
        at=_pairs(at_items, "--at") or None, thresholds=need.get("thresholds") or None,
        ranges=need.get("ranges") or None, trajectories=need.get("trajectories"),
        bands=not no_bands, iiv=not no_iiv, chunk_size=chunk_size, threads=threads,
        out=None if nc_later else out, dask=dask,
        raise_on_failure="all",  # partial failures are reported below, per patient
        **method_options,
    )  # fmt: skip
    if outcomes_asked:
        ds = _cohort_outcomes(ds, regimen, target, risks, out, limit)
    n = int(ds.sizes["patient"])
    _echo(_model_line(spec))
    for line in tables.companion_lines(ds):
        _echo(line)
    name = ds.attrs.get("regimen_name")
    _echo(f"regimen: {name + ': ' if name else ''}{ds.attrs['regimen']}")
    _echo(f"population: {ds.attrs['population']}, {n:,} patients, seed {ds.attrs['seed']}")
    if solvers.SOLVERS[ds.attrs.get("solver_method", "exact")].adaptive:
        _echo(
            f"solver: {ds.attrs['solver_method']} (rtol {ds.attrs['solver_rtol']:g}, atol "
            f"{ds.attrs['solver_atol']:g}): {ds.attrs['solver_nsteps_mean']:.0f} steps and "
            f"{ds.attrs['solver_nfev_mean']:.0f} RHS evaluations per patient on average"
        )
    for line in tables.cohort_summary_lines(ds):
        _echo(line)
    for line in tables.cohort_outcome_lines(ds):
        _echo(line)
    _echo_cohort_pd(ds)
    if tci_perf:
        perf = tci_performances.cohort_performance(
            ds, regimen, pop, patients, seed, threads=threads, chunk_size=chunk_size
        )
        for line in tci_performances.summary_lines(perf, regimen):
            _echo(line)
    n_failed = int(ds.attrs["n_failed"])
    if n_failed:
        _echo(f"pkpd: warning: {n_failed} patients failed (see `status`)", err=True)
    if out_png and "band" in ds:
        with result_io.atomic_outputs() as stage:
            stage(
                result_io.check_target(out_png, _FIGURES, "--plot"),
                lambda tmp: plots.plot_bands(
                    ds, tmp, fmt=str(out_png).rsplit(".", 1)[-1], **plot_opts
                ),
            )
        _echo(f"wrote {out_png}")
    if out:
        _echo(f"wrote {out}")
    if table_targets:
        patient_tables.write_patient_table(ds, table_targets[0])
        for path in table_targets:
            _echo(f"wrote {path}")
    if nonmem_targets:
        frame = nonmem_tables.nonmem_table(
            spec, regimen, pop, patients, seed, observe, iiv=not no_iiv, threads=threads
        )
        nonmem_tables.write_nonmem(frame, nonmem_targets[0])
        for path in nonmem_targets:
            _echo(f"wrote {path}")
    _echo(
        f"simulated {n:,} patients in {ds.attrs['elapsed_s']:.2f} s "
        f"({ds.attrs['patients_per_second']:,.0f} patients/s)"
    )
    _echo(DISCLAIMER)


def _tci_trajectories(regimen, spec, traj):
    """The stored trajectories with the pump's targeted output added (--tci-performance)."""
    reg = regimen_files.load_regimen(regimen)
    if reg.tci is None:
        raise click.BadParameter("needs a regimen with a TCI pump ([tci] or 'TCI ...')",
                                 param_hint="--tci-performance")  # fmt: skip
    out = tci_performances.target_output(reg)
    if out not in spec.output_names:
        raise click.BadParameter(
            f"the pump targets {out!r}, which model {spec.name!r} does not have "
            f"(outputs: {', '.join(spec.output_names)})",
            param_hint="--tci-performance",
        )
    if traj is True:
        return traj
    return [*(traj or []), *([out] if out not in (traj or []) else [])]


def _limit_options(risks, max_risk, risk_rule, allow_extrapolation) -> dict:
    """cohort_outcomes keywords of --max-risk, --risk-rule and --allow-extrapolation,
    checked before the run (the last two mean nothing without a limit)."""
    if max_risk is None:
        for opt, given in (
            ("--risk-rule", risk_rule),
            ("--allow-extrapolation", allow_extrapolation),
        ):
            if given:
                raise click.BadParameter("needs --max-risk LIMIT", param_hint=opt)
        return {}
    if len(risks) != 1:
        raise click.BadParameter(
            f"needs exactly one --risk model, got {len(risks)}", param_hint="--max-risk"
        )
    if not 0.0 <= max_risk <= 1.0:
        raise click.BadParameter(
            f"{max_risk!r}: expected a fraction in [0, 1], e.g. 0.1", param_hint="--max-risk"
        )
    rule = risk_rule or "upper"
    try:
        designs.risk_domain.parse_rule(rule)
    except PkpdError as exc:
        raise click.BadParameter(f"{rule!r}: {exc}", param_hint="--risk-rule") from None
    return {"max_risk": max_risk, "risk_rule": rule, "allow_extrapolation": allow_extrapolation}


def _cohort_outcomes(ds, regimen, target, risks, out, limit=None):
    """The cohort with its PTA and risk (as `compare` computes them per regimen), written
    to `out`: a .nc now, a .zarr store (already written by the run) gets them added; if
    that fails the store is removed, so no store lacks the outcomes the command promised."""
    zarr_out = bool(out) and not str(out).lower().endswith(".nc")
    try:
        return _add_cohort_outcomes(ds, regimen, target, risks, out, limit)
    except BaseException:
        if zarr_out and os.path.isdir(out):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _add_cohort_outcomes(ds, regimen, target, risks, out, limit):
    before = set(ds.data_vars)
    ds = designs.cohort_outcomes(
        ds, target=target, risks=risks, regimen=regimen_files.load_regimen(regimen), **(limit or {})
    )
    if out and str(out).lower().endswith(".nc"):
        with result_io.atomic_outputs() as stage:
            stage(
                result_io.check_target(out, (".nc",), "--out"),
                lambda tmp: result_io.write_netcdf(ds, tmp),
            )
    elif out:
        new = ds[[v for v in ds.data_vars if v not in before]]
        new.attrs = dict(ds.attrs)  # the store's attributes and the outcomes' (target, risks)
        new.to_zarr(out, mode="a", consolidated=True, zarr_format=2)
    return ds


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


def _echo_cohort_pd(ds) -> None:
    """The racemic caveat and each PD endpoint's provenance line of a cohort."""
    if "dose_conversion" in ds.attrs:
        _echo(f"dose conversion: {ds.attrs['dose_conversion']}")
        _echo(f"  caveats: {ds.attrs['dose_conversion_caveats']}")
    for name in (ds.attrs.get("pd_endpoints") or "").split(", "):
        if name:
            _echo(f"PD {name}: {ds.attrs[f'pd_{name}']}")


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


@main.command(help="Compare regimens on the same virtual patients (common random numbers).")
@click.argument("model")
@click.argument("regimens", nargs=-1, required=True)
@click.option("--population", required=True, help="Population name, file, or covariate .csv.")
@click.option("--patients", type=int, required=True, help="Patients per regimen.")
@click.option("--seed", type=int, default=0, show_default=True, help="One seed for every regimen.")
@click.option(
    "--target",
    multiple=True,
    help="PTA target, e.g. 'cp >= 50 ng/mL for 50% of end_of_surgery..end_of_surgery+24h' (one).",
)
@click.option("--risk", "risks", multiple=True, help="Risk model (repeatable; needs pkpd.risk).")
@click.option("--window", "windows", multiple=True, metavar="NAME=START..END", help="AUC window.")
@click.option("--threshold", "thresholds", multiple=True, metavar="OUTPUT=CONC")
@click.option("--range", "ranges", multiple=True, metavar="OUTPUT=LOW..HIGH", help="Time within.")
@click.option("--at", "at_items", multiple=True, metavar="NAME=TIME")
@click.option("--anchors-from", "anchors", help="Regimen declaring events of one-line regimens.")
@click.option(
    "--anchor",
    "anchor_items",
    multiple=True,
    metavar="EVENT=TIME",
    help="A fixed time of an event for every patient, e.g. end_of_surgery=3h (repeatable; "
    "not for an event --anchors-from declares).",
)
@click.option("--until", help="End of the common grid (default: 24 h after the latest dose).")
@click.option("--every", default="5 min", show_default=True, help="Grid step.")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Write the result (.nc).")
@click.option("--plot", "out_png", type=click.Path(dir_okay=False), help="Figure (.png/.svg/.pdf).")
@click.option(
    "--plot-window",
    "plot_window",
    metavar="START..END",
    help="Time axis of the bands of --plot, e.g. 0..end_of_surgery+2h (events at their median).",
)
@click.option("--plot-log", is_flag=True, help="Logarithmic concentration axes of --plot.")
def compare(
    model, regimens, population, patients, seed, target, risks, windows, thresholds, at_items,
    anchors, anchor_items, until, every, out, out_png, ranges=(), plot_window=None,
    plot_log=False,
) -> None:  # fmt: skip
    plot_opts = _plot_options(out_png, plot_window, plot_log)
    if plot_opts["window"] is not None:
        names = _compare_event_names(regimens, anchors)
        if names is not None:
            _check_window_events(plot_opts, dict.fromkeys(names, 0.0))
    targets = _grid_targets(out, out_png)
    thr = _cohort_thresholds(thresholds)
    cds = designs.compare(
        model, list(regimens), population, patients, seed, target=_one(target, "--target"),
        risks=risks,
        windows=_windows_option(windows), thresholds=thr or None,
        at=_pairs(at_items, "--at") or None, anchors=anchors,
        anchor_times=_pairs(anchor_items, "--anchor") or None, until=until, every=every,
        ranges=_ranges_option(ranges),
    )  # fmt: skip
    _echo(f"model: {cds.attrs['model']} ({cds.attrs.get('model_drug', '')})")
    _echo(
        f"population: {cds.attrs['population']}, {patients:,} patients, seed {seed}: the same "
        "virtual patients for every regimen"
    )
    for r, t in zip(cds.regimen.values, cds.regimen_text.values, strict=True):
        _echo(f"  {r}: {t}")
    _echo("median (5-95%) over patients:")
    for line in tables.text_table(
        ["metric", *map(str, cds.regimen.values)], tables.compare_rows(cds)
    ):
        _echo(line)
    for line in tables.extrapolation_lines(cds):
        _echo(line)
    _write_grid(targets, cds, functools.partial(plots.plot_compare, **plot_opts))
    _echo(DISCLAIMER)


def _one(values, option):
    """The value of an option given at most once (click keeps the last of repeats of a
    single-valued option silently; these are `multiple` so that a repeat is refused)."""
    if len(values) > 1:
        raise click.BadParameter(
            f"given {len(values)} times ({', '.join(map(repr, values))}); give one",
            param_hint=option,
        )
    return values[0] if values else None


def _grid_targets(out, out_png) -> list[tuple[str, object]]:
    """(kind, path) of the files of `pkpd compare` and `pkpd design`, checked before any work."""
    targets = []
    if out:
        targets.append(("nc", result_io.check_target(out, (".nc",), "--out")))
    if out_png:
        targets.append(("png", result_io.check_target(out_png, _FIGURES, "--plot")))
    return targets


def _write_grid(targets, ds, plot) -> None:
    """Write the dataset and the figure (drawn by `plot`) of compare/design, all or none."""
    with result_io.atomic_outputs() as stage:
        for kind, path in targets:
            if kind == "nc":
                stage(path, lambda tmp: result_io.write_netcdf(ds, tmp))
            else:
                stage(path, lambda tmp, p=path: plot(ds, tmp, fmt=p.suffix))
    for _kind, path in targets:
        _echo(f"wrote {path}")


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
@click.option(
    "--var",
    "var_items",
    multiple=True,
    metavar="NAME=V1,V2,...",
    help="A further design variable filling {NAME} of --template as written, e.g. "
    "'lockout=5 min,8 min,15 min' (repeatable).",
)
@click.option("--anchors-from", "anchors", help="Regimen declaring the events (end_of_surgery).")
@click.option(
    "--anchor",
    "anchor_items",
    multiple=True,
    metavar="EVENT=TIME",
    help="A fixed time of an event for every patient, e.g. end_of_surgery=3h (repeatable).",
)
@click.option(
    "--target",
    multiple=True,
    help="PTA target, e.g. 'cp >= 50 ng/mL for 50% of 0h..end_of_surgery' (one).",
)
@click.option("--risk", help="Risk model (needs pkpd.risk).")
@click.option("--max-risk", type=float, help="Limit on the risk incidence (fraction, e.g. 0.05).")
@click.option(
    "--risk-rule",
    default="upper",
    show_default=True,
    help="How --max-risk is read: upper (the 97.5% quantile, upper end of the 95% interval), "
    "mean, or a quantile q50/q75/q90/q95.",
)
@click.option(
    "--allow-extrapolation",
    is_flag=True,
    help="Let points outside the risk model's calibration domain count as meeting the limit.",
)
@click.option("--window", "windows", multiple=True, metavar="NAME=START..END", help="AUC window.")
@click.option("--until", help="End of the common grid.")
@click.option("--every", default="5 min", show_default=True, help="Grid step.")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Write the grid (.nc).")
@click.option(
    "--plot", "out_png", type=click.Path(dir_okay=False), help="Heatmaps (.png/.svg/.pdf)."
)
def design(
    model, population, patients, seed, bolus, rate, duration, template, anchors, anchor_items,
    target, risk, max_risk, risk_rule, allow_extrapolation, windows, until, every, out, out_png,
    var_items=(),
) -> None:  # fmt: skip
    targets = _grid_targets(out, out_png)
    gds = designs.design(
        model, population, patients, seed, bolus=_list_option(bolus, "--bolus"),
        rate=_list_option(rate, "--rate"), duration=_list_option(duration, "--duration", False),
        template=template, variables=_var_option(var_items), anchors=anchors,
        anchor_times=_pairs(anchor_items, "--anchor") or None, target=_one(target, "--target"),
        risk=risk,
        max_risk=max_risk,
        windows=_windows_option(windows), until=until, every=every, risk_rule=risk_rule,
        allow_extrapolation=allow_extrapolation,
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
    if "pareto" in gds:
        _echo("Pareto front (max PTA, min risk):")
        for line in tables.text_table(*tables.design_pareto_rows(gds)):
            _echo("  " + line)
    elif "pta" in gds:
        _echo("PTA over the grid:")
        for line in tables.text_table(*tables.design_pta_rows(gds)):
            _echo("  " + line)
    head, rows = tables.design_pca_rows(gds)
    if rows:
        _echo("PCA over the grid (medians over patients, whole run):")
        for line in tables.text_table(head, rows):
            _echo("  " + line)
    _echo_design_domain(gds)
    _echo(gds.attrs["best_message"])
    _write_grid(targets, gds, plots.plot_design)
    _echo(DISCLAIMER)


def _var_option(items) -> dict[str, list[str]] | None:
    """``{name: [texts]}`` of --var NAME=V1,V2 (each value as written, stripped)."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise click.BadParameter(f"{item!r}: expected NAME=V1,V2,...", param_hint="--var")
        if name.strip() in out:
            raise click.BadParameter(f"{name.strip()!r} given twice", param_hint="--var")
        out[name.strip()] = [v.strip() for v in values.split(",")]
    return out or None


def _echo_design_domain(gds) -> None:
    """How many grid points extrapolate the risk model, and the distinct reasons."""
    lines = tables.extrapolation_lines(gds)
    if not lines:
        return
    rname = gds.attrs.get("risk") or ""
    why = sorted({str(v) for v in np.ravel(gds[f"extrapolation_{rname}"].values) if str(v)})
    _echo(
        f"{len(lines)} of {gds.regimen.size} grid points lie outside the {rname} calibration "
        "domain (extrapolation_" + rname + " in the dataset):"
    )
    for w in why[:5]:
        _echo(f"  - {w}")
    if len(why) > 5:
        _echo(f"  - ... {len(why) - 5} more distinct reasons")


@main.command(
    "compile",
    help="Compile the kernels of the shipped models, or of the given models (names or .toml "
    "files), ahead of their first use. A cold compile takes about a minute per kernel (one per "
    "state size of a linear model, one per [ode] model) and otherwise happens at the first "
    "cohort of each; afterwards that cohort loads the code from the cache. Run once per "
    "machine and package version (make kernels).",
    short_help="Compile the models' kernels ahead of their first use.",
)
@click.argument("model_names", metavar="[MODEL]...", nargs=-1)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    help="Worker processes (default: the number of CPUs).",
)
def compile_command(model_names, jobs) -> None:
    start = time.perf_counter()
    names = list(model_names) or None

    def done(r) -> None:
        how = f"compiled {r.compiled} functions" if r.compiled else "already compiled"
        _echo(f"  {r.model:<32} {r.kernel:<28} {r.seconds:6.1f} s  {how}")

    _echo("compiling each model's cohort and one-patient kernels (one process per kernel)")
    results = ahead.compile_kernels(names, jobs=jobs, on_done=done)
    kernels = len({r.key for r in results})
    _echo(
        f"{len(results)} model(s), {kernels} kernel(s) in {time.perf_counter() - start:.0f} s; "
        f"compiled code cached in {cache_root()} and numba's cache"
    )


@main.command(help="Write a self-contained HTML report of a result (.nc or .zarr).")
@click.argument("result", type=click.Path(exists=True))
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="HTML file.")
def report(result, out) -> None:
    target = result_io.check_target(out, (".html", ".htm"), "--out")
    with result_io.atomic_outputs() as stage:
        stage(target, lambda tmp: reports.write_report(result, tmp))
    _echo(f"wrote {target}")
    _echo(DISCLAIMER)


# ----------------------------------------------------------------------------- risk


@main.group(
    "risk",
    invoke_without_command=True,
    help="Side-effect risk models (models/risk): list them, show one, or refit one.",
    short_help="Side-effect risk models: list, show, refit.",
)
@click.pass_context
def risk_group(ctx) -> None:
    if ctx.invoked_subcommand is None:
        _echo_risks()


@risk_group.command(
    "list",
    help="One line per shipped risk model: metric, calibration domain, verification.",
    short_help="One line per shipped risk model.",
)
def risk_list() -> None:
    _echo_risks()


def _echo_risks() -> None:
    _echo_rows(
        ("name", "metric", "calibration domain", "verification"),
        catalogue.risk_rows(),
        "Curve, calibration arms and caveats: pkpd risk show NAME; "
        "use one: pkpd compare/design ... --risk NAME",
    )


@risk_group.command(
    "show",
    help="Curve, exposure, calibration arms with sources, fit and caveats of one model.",
    short_help="Curve, calibration arms, fit, caveats.",
)
@click.argument("name")
def risk_show(name: str) -> None:
    for line in catalogue.describe_risk(name):
        _echo(line)


@risk_group.command(
    "refit",
    help="""Recalibrate a risk model by virtual trials and rewrite the generated [fit]
section of its file (the hand-written part above it is kept).

\b
NAME  a shipped risk model name (e.g. psychotomimetic) or a risk model .toml file
""",
)
@click.argument("name")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Write the refitted file here (default: over the model's own file).",
)
@click.option(
    "--n-virtual", type=int, help="Virtual patients per arm (default: the file's [simulation])."
)
@click.option("--seed", type=int, help="Cohort seed (default: the file's [simulation]).")
def risk_refit(name, out, n_virtual, seed) -> None:
    if out:
        result_io.check_target(out, (".toml",), "--out")  # before the virtual trials
    res = risk_analysis.refit(name, out=out, n_virtual=n_virtual, seed=seed)
    for line in _refit_lines(res):
        _echo(line)


def _refit_lines(res) -> list[str]:
    """The fit, the posterior summary and every arm, predicted against observed."""
    lines = [
        f"MLE alpha {res.mle[0]:.4g}, gamma {res.mle[1]:.4g}"
        + (" (at the prior-mean background)" if res.settings.get("background") else "")
        + f"; posterior spread over {res.ess:.0f} effective grid cells"
    ]
    for k, q in res.summary().items():
        mom = f"mean {q['mean']:.4g} sd {q['sd']:.4g} " if "mean" in q else ""
        lines.append(f"{k}: {mom}median {q['q500']:.4g} 95% [{q['q025']:.4g}, {q['q975']:.4g}]")
    for a in res.arms:
        lines.append(
            f"{a['trial']} {a['arm']} [{a['use']}]: observed {a['events']}/{a['n']} "
            f"({100 * a['observed']:.1f}%), predicted {100 * a['predicted_mean']:.1f}% "
            f"[{100 * a['predicted_lo']:.1f}, {100 * a['predicted_hi']:.1f}]"
        )
    return lines


if __name__ == "__main__":  # pragma: no cover
    main()
