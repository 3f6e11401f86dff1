"""User-written nonlinear models: the ``[ode]`` section of a model file.

A model file with an ``[ode]`` section writes its right-hand side as equations (schema in
``models/README.md``)::

    [ode]
    dose_state = "central"
    [ode.states.central]
    initial = 0
    unit = "mg"
    [ode.intermediates]
    cp = "central / V1"
    [ode.derivatives]
    central = "rate - Vmax * cp / (Km + cp) - Q2 * (cp - peripheral / V2)"
    [ode.outputs.cp]
    expression = "cp"
    concentration = true

Parameters, covariates, variability, residual error and provenance are those of any
model file and are read by the shared :class:`pkpd.inputs.model.ModelSpec` machinery.

From text to machine code, without ``eval``
-------------------------------------------
Each equation is parsed with :func:`ast.parse` (``mode="eval"``) and walked by a
whitelist: numbers, the names the model defines, ``+ - * / **``, unary minus,
comparisons, ``and``/``or``/``not``, conditional expressions (``a if c else b``) and the
functions ``exp log sqrt pow min max abs``. Anything else (attribute access, subscripts,
lambdas, other calls, strings, ``__import__``) is an error naming the file, the equation
key and the offending name. The checked tree is printed back as Python source of a
numba function; user names are renamed (``v_<name>``), so they cannot shadow anything.

The generated module is written atomically (temporary file + :func:`os.replace`) into
``$PKPD_CACHE_DIR/ode`` (default ``~/.cache/ketamine-pkpd/ode``) under the hash of its own
text, which includes a hash of the solver sources, and imported from there; its
functions are ``numba.njit(cache=True)``, so a second process loads machine code from
numba's cache instead of compiling. An existing file is never rewritten (numba checks the
source file's time stamp). The cache is trusted code (:mod:`pkpd.cache`): its folders and
files must be private to the user, or nothing is loaded from it.

Augmented state: ``y = [states..., dose_given, auc_<output> for each concentration
output]``, so dose given and exposure are integrated by the same solver.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import math
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pkpd import cache
from pkpd.errors import ModelError, SimulationError

__all__ = ["FUNCTIONS", "OdeSystem", "cache_dir", "ode_spec_from_dict", "parse_expression"]

#: Whitelisted functions: name -> (generated code, number of arguments; None = 2 or more).
FUNCTIONS: dict[str, tuple[str, int | None]] = {
    "exp": ("math.exp", 1),
    "log": ("math.log", 1),
    "sqrt": ("math.sqrt", 1),
    "abs": ("abs", 1),
    "pow": ("_pow", 2),
    "min": ("min", None),
    "max": ("max", None),
}
#: Names with a fixed meaning in every equation.
TIME = "t"
RATE = "rate"
RESERVED = {TIME, RATE, *FUNCTIONS, "e", "pi", "inf", "nan"}
#: Dataset variables a simulation generates besides the outputs (see
#: :func:`dataset_variables`): an output may not take these names or prefixes.
GENERATED_NAMES = frozenset({"time", "dose_given"})
GENERATED_PREFIXES = ("auc_", "state_")
# ASCII only, matched whole (``fullmatch``: ``$`` would accept a trailing newline).
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Deepest nesting of an equation (a chain ``a + b + c`` nests one level per operator).
#: The generated source adds at most two parentheses per level, and Python's parser
#: stops at 200 nested parentheses.
MAX_DEPTH = 80

_BINOPS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
}
_CMPOPS = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}
_NODE_WORDS = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambda",
    ast.Starred: "starred arguments",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.ListComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.JoinedStr: "f-strings",
    ast.Await: "await",
    ast.Yield: "yield",
}


def cache_dir() -> Path:
    """Folder of generated model code: ``$PKPD_CACHE_DIR/ode`` or ``~/.cache/ketamine-pkpd/ode``."""
    return cache.cache_root() / "ode"


# ----------------------------------------------------------------------------- parsing


def parse_expression(text, known: set[str], *, file, key: str) -> tuple[str, set[str]]:
    """Check one equation against the whitelist and translate it to Python source.

    Parameters
    ----------
    text : str
        The equation's right-hand side, e.g. ``"Vmax * cp / (Km + cp)"``.
    known : set of str
        Names the equation may use (besides :data:`FUNCTIONS`).
    file, key
        Location for error messages.

    Returns
    -------
    source : str
        Python source over the renamed variables ``v_<name>``.
    names : set of str
        The model names it uses.

    Raises
    ------
    ModelError
        Syntax errors, forbidden constructs and unknown names, naming `file`, `key` and
        the offending name.

    Examples
    --------
    >>> src, used = parse_expression("exp(-k * t)", {"k", "t"}, file="m.toml", key="ode.x")
    >>> src, sorted(used)
    ('math.exp(((-v_k)) * (v_t))', ['k', 't'])
    >>> parse_expression("k.__class__", {"k"}, file="m.toml", key="ode.x")
    Traceback (most recent call last):
    ...
    pkpd.errors.ModelError: m.toml: `ode.x`: attribute access is not allowed ('k.__class__'); ...
    """

    def err(msg):
        return ModelError(f"{file}: `{key}`: {msg}")

    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise err(f"expected an expression (a string or a number), got {text!r}")
    if not isinstance(text, str):
        if not math.isfinite(text):
            raise err(f"{text!r} is not finite")
        return repr(float(text)), set()
    if not text.strip():
        raise err("empty expression")
    if not text.isascii():
        # Python's parser NFKC-normalises identifiers ('ℂL' reads as 'CL'): what runs
        # would not be the text a reviewer reads.
        i, ch = next((i, c) for i, c in enumerate(text) if not c.isascii())
        raise err(
            f"non-ASCII character {ch!r} (U+{ord(ch):04X}) at position {i} of "
            f"{_short(text)!r}: equations are written in ASCII"
        )
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise err(f"cannot parse {_short(text)!r}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise err(f"{_short(text)!r} is nested too deeply to parse") from None
    depth = _depth(tree)
    if depth > MAX_DEPTH:
        raise err(
            f"{_short(text)!r} nests {depth} levels deep (each operator of a chain such as "
            f"'a + b + c' is one level); at most {MAX_DEPTH}: split it into intermediates"
        )
    # Names first, so the offending name is reported even inside a forbidden construct
    # (``__import__('os').system`` names ``__import__``).
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Name)
            # A call of an unknown function is reported as such below (not "__" names).
            and (id(node) not in called or node.id.startswith("_"))
            and node.id not in known
            and node.id not in FUNCTIONS
        ):
            raise err(f"unknown name {node.id!r}; known names: {', '.join(sorted(known))}")
    used: set[str] = set()
    allowed_words = (
        "numbers, model names, + - * / **, comparisons, and/or/not, "
        "'a if condition else b', and the functions " + ", ".join(FUNCTIONS)
    )

    def name_of(node) -> str:
        try:
            return ast.unparse(node)
        except Exception:  # pragma: no cover - unparse handles every parsed node
            return type(node).__name__

    def walk(node) -> str:
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise err(f"constant {v!r} is not allowed (only numbers); allowed: {allowed_words}")
            try:
                f = float(v)
            except OverflowError:  # an integer literal beyond the float range
                f = math.inf
            if not math.isfinite(f):  # 1e999 parses as inf
                written = ast.get_source_segment(text.strip(), node) or name_of(node)
                raise err(
                    f"the number {_short(written)!r} is not a finite float (at most about 1.8e308)"
                )
            return repr(f)
        if isinstance(node, ast.Name):
            nm = node.id
            if nm.startswith("_") or nm not in known:
                if nm in FUNCTIONS:
                    raise err(f"function {nm!r} used as a value (call it: {nm}(...))")
                raise err(f"unknown name {nm!r}; known names: {', '.join(sorted(known))}")
            used.add(nm)
            return f"v_{nm}"
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise err(
                    f"operator {type(node.op).__name__} is not allowed in "
                    f"{name_of(node)!r}; allowed: {allowed_words}"
                )
            return f"({walk(node.left)}) {op} ({walk(node.right)})"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return f"(-{walk(node.operand)})"
            if isinstance(node.op, ast.UAdd):
                return walk(node.operand)
            if isinstance(node.op, ast.Not):
                return f"(not {walk(node.operand)})"
            raise err(f"operator {type(node.op).__name__} is not allowed in {name_of(node)!r}")
        if isinstance(node, ast.BoolOp):
            op = " and " if isinstance(node.op, ast.And) else " or "
            return "(" + op.join(f"({walk(v)})" for v in node.values) + ")"
        if isinstance(node, ast.Compare):
            parts = [f"({walk(node.left)})"]
            for o, c in zip(node.ops, node.comparators, strict=True):
                sym = _CMPOPS.get(type(o))
                if sym is None:
                    raise err(f"comparison {type(o).__name__} is not allowed in {name_of(node)!r}")
                parts.append(f"{sym} ({walk(c)})")
            return "(" + " ".join(parts) + ")"
        if isinstance(node, ast.IfExp):
            return f"(({walk(node.body)}) if ({walk(node.test)}) else ({walk(node.orelse)}))"
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise err(
                    f"call of {name_of(node.func)!r} is not allowed; allowed functions: "
                    f"{', '.join(FUNCTIONS)}"
                )
            fname = node.func.id
            if fname not in FUNCTIONS:
                raise err(
                    f"call of {fname!r} is not allowed; allowed functions: {', '.join(FUNCTIONS)}"
                )
            if node.keywords:
                raise err(f"keyword arguments are not allowed in the call of {fname!r}")
            code, nargs = FUNCTIONS[fname]
            if (nargs is not None and len(node.args) != nargs) or (
                nargs is None and len(node.args) < 2
            ):
                want = nargs if nargs is not None else "2 or more"
                raise err(f"{fname}() takes {want} arguments, got {len(node.args)}")
            return f"{code}(" + ", ".join(walk(a) for a in node.args) + ")"
        word = _NODE_WORDS.get(type(node), type(node).__name__)
        raise err(f"{word} is not allowed ({name_of(node)!r}); allowed: {allowed_words}")

    return walk(tree.body), used


def _is_concentration_unit(unit: str) -> bool:
    """True when `unit` reads as a mass or molar concentration (``ng/mL``, ``nmol/L``)."""
    from pkpd.errors import UnitError
    from pkpd.inputs.units import parse_quantity

    try:
        parse_quantity(f"1 {unit}", "concentration", molar_mass=1.0)
    except UnitError:
        return False
    return True


def _short(text: str, n: int = 60) -> str:
    """`text` for a one-line message: at most about `n` characters."""
    return text if len(text) <= n else text[:n] + f"... ({len(text)} characters)"


def _depth(tree) -> int:
    """Nesting depth of the expressions in `tree`, without recursion (a deep tree would
    exhaust the interpreter's stack)."""
    deepest = 0
    todo = [(tree, 0)]
    while todo:
        node, d = todo.pop()
        if isinstance(node, ast.expr):
            d += 1
            deepest = max(deepest, d)
        todo.extend((c, d) for c in ast.iter_child_nodes(node))
    return deepest


# ----------------------------------------------------------------------------- the system


@dataclass(frozen=True)
class OdeState:
    name: str
    initial: str  # generated source (over parameters and covariates)
    initial_text: str
    unit: str
    description: str


@dataclass(frozen=True)
class OdeOutput:
    name: str
    source: str
    text: str
    concentration: bool
    unit: str
    long_name: str


@dataclass
class OdeSystem:
    """A validated ``[ode]`` section and its generated, compiled code."""

    file: Path | None
    states: list[OdeState]
    intermediates: list[tuple[str, str, str]]  # (name, source, text)
    derivatives: dict[str, tuple[str, str]]  # state -> (source, text)
    outputs: list[OdeOutput]
    dose_state: str
    stiff: bool
    param_names: list[str]
    covariate_names: list[str]  # numeric covariates used by the equations
    uses_time: bool
    rate_dependent: frozenset = frozenset()  # intermediates that depend on `rate`
    source: str = ""
    hash: str = ""
    _module: Any = None

    @property
    def n_states(self) -> int:
        return len(self.states)

    @property
    def n_aug(self) -> int:
        """Augmented state size: states, dose given, one AUC per concentration output."""
        return self.n_states + 1 + sum(o.concentration for o in self.outputs)

    def auc_outputs(self) -> list[OdeOutput]:
        return [o for o in self.outputs if o.concentration]

    # ---- parameters -------------------------------------------------------------

    def parameter_vector(self, theta: np.ndarray, covariates: dict) -> np.ndarray:
        """``p = [theta..., covariate values...]`` for the generated functions."""
        vals = []
        for c in self.covariate_names:
            v = covariates.get(c)
            if v is None:
                raise ModelError(
                    f"{self.file}: covariate `{c}` is used in [ode] and has no default: pass it"
                )
            vals.append(float(v))
        return np.ascontiguousarray(np.concatenate([np.asarray(theta, float), vals]))

    def bolus_map(self) -> np.ndarray:
        """A bolus adds to the dose state and to the dose-given accumulator."""
        b = np.zeros(self.n_aug)
        b[[s.name for s in self.states].index(self.dose_state)] = 1.0
        b[self.n_states] = 1.0
        return b

    # ---- code generation ---------------------------------------------------------

    def generate(self) -> str:
        """Python source of the numba module (deterministic: same model, same text)."""
        ns = self.n_states
        lines = [
            # No file name here: the same equations share one module (and one cache).
            "# Generated by pkpd.ode from the [ode] section of a model file -- do not edit.",
            f"# solver sources: {_solver_hash()}",
            "import math",
            "",
            "import numba",
            "",
            "from pkpd.engine.solvers.dopri5 import dopri5_solve",
            "from pkpd.engine.solvers.rosenbrock import no_jac, rodas_solve",
            "",
            '_jit = numba.njit(cache=True, nogil=True, error_model="numpy")',
            "",
            "",
            "@_jit",
            "def _pow(a, b):",
            "    return a**b",
            "",
        ]
        unpack_p = [f"    v_{n} = p[{i}]" for i, n in enumerate(self.param_names)]
        n_par = len(self.param_names)
        unpack_p += [f"    v_{n} = p[{n_par + i}]" for i, n in enumerate(self.covariate_names)]
        unpack_y = [f"    v_{s.name} = y[{i}]" for i, s in enumerate(self.states)]
        inter = [f"    v_{n} = {src}" for n, src, _ in self.intermediates]
        body = ["", "@_jit", "def rhs(t, y, u, p, dy):", "    v_t = t", "    v_rate = u"]
        body += unpack_p + unpack_y + inter
        for i, s in enumerate(self.states):
            body.append(f"    dy[{i}] = {self.derivatives[s.name][0]}")
        body.append(f"    dy[{ns}] = u")
        for j, o in enumerate(self.auc_outputs()):
            body.append(f"    dy[{ns + 1 + j}] = {o.source}")
        # Outputs along a trajectory.
        body += ["", "", "@_jit", "def outputs_into(t_out, Y, p, O):"]
        body += unpack_p
        body += ["    for r in range(t_out.shape[0]):", "        v_t = t_out[r]"]
        body += ["        y = Y[r]"]
        # Intermediates that depend on the infusion rate are not outputs' business (an
        # output is a function of the state; _read_ode checks that).
        inter_out = [
            f"    v_{n} = {src}" for n, src, _ in self.intermediates if n not in self.rate_dependent
        ]
        body += ["    " + ln for ln in unpack_y + inter_out]
        for j, o in enumerate(self.outputs):
            body.append(f"        O[r, {j}] = {o.source}")
        # Initial state.
        body += ["", "", "@_jit", "def initial_into(p, y0):", *unpack_p]
        for i, s in enumerate(self.states):
            body.append(f"    y0[{i}] = {s.initial}")
        for j in range(ns, self.n_aug):
            body.append(f"    y0[{j}] = 0.0")
        auto = 0 if self.uses_time else 1
        body += [
            "",
            "",
            "@_jit",
            "def solve_dopri5_into(p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol,",
            "                      h_fixed, hmax, max_steps, nstiff, out, work, stats):",
            "    return dopri5_solve(rhs, p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol,",
            "                        atol, h_fixed, hmax, max_steps, nstiff, out, work, stats)",
            "",
            "",
            "@_jit",
            "def solve_rodas_into(p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol,",
            "                     h_fixed, hmax, max_steps, out, work, mats, ipiv, stats):",
            "    return rodas_solve(rhs, no_jac, p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out,",
            "                       rtol, atol, h_fixed, hmax, max_steps, 1,"
            f" {auto}, out, work, mats,",
            "                       ipiv, stats)",
            "",
            "",
            f"_AUTONOMOUS = {auto}  # the right-hand side does not read t",
        ]
        body += _COHORT_WRAPPERS.splitlines()
        return "\n".join(lines + body)

    def module(self):
        """The generated module, written to the cache folder and imported once."""
        if self._module is None:
            self.source = self.generate()
            self.hash = hashlib.sha256(self.source.encode()).hexdigest()[:20]
            self._module = _import_generated(self.source, self.hash)
        return self._module

    def kernels(self):
        """``(solve_dopri5_into, solve_rodas_into)`` of the kernel protocol
        (:mod:`pkpd.engine.solvers.registry`)."""
        m = self.module()
        return m.solve_dopri5_into, m.solve_rodas_into

    def initial_state(self, p: np.ndarray) -> np.ndarray:
        y0 = np.zeros(self.n_aug)
        self.module().initial_into(p, y0)
        if not np.all(np.isfinite(y0)):
            bad = [s.name for s, v in zip(self.states, y0, strict=False) if not np.isfinite(v)]
            raise SimulationError(f"{self.file}: non-finite initial value of state(s) {bad}")
        return y0

    def evaluate_outputs(self, t: np.ndarray, Y: np.ndarray, p: np.ndarray) -> np.ndarray:
        O = np.zeros((t.shape[0], len(self.outputs)))
        self.module().outputs_into(np.ascontiguousarray(t), np.ascontiguousarray(Y), p, O)
        return O


# The cohort kernels of a generated model (:mod:`pkpd.kernels_adaptive`): the per-patient
# solvers bound to this module's right-hand side, the shared metric reduction inlined
# outside the parallel loop, and the prange loop. The solver logic (workspaces, argument
# lists) is in the generic ``*_state_patient`` functions, which take the right-hand side
# as an argument and are inlined here; only these bindings are generated, because a
# cached numba function cannot take the right-hand side as an argument itself (its type
# names a dispatcher object of one process: every new process misses the disk cache and
# adds a copy to it), nor can an argument be inlined into a parallel loop's body.
_COHORT_WRAPPERS = """

from pkpd.engine.kernels_adaptive import adaptive_patient as _adaptive_patient
from pkpd.engine.solvers.dopri5 import dopri5_state_patient as _dopri5_state_patient
from pkpd.engine.solvers.rosenbrock import rodas_state_patient as _rodas_state_patient


@_jit
def _dopri5_patient(pp, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol, hmax,
                    max_steps, nstiff, out, pre, fold, stats):
    return _dopri5_state_patient(rhs, pp, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol,
                                 atol, hmax, max_steps, nstiff, out, pre, fold, stats)


@_jit
def _rodas_patient(pp, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol, hmax,
                   max_steps, nstiff, out, pre, fold, stats):
    return _rodas_state_patient(rhs, _AUTONOMOUS, pp, b, y0, t0, ev_t, ev_rate, ev_bolus,
                                t_out, rtol, atol, hmax, max_steps, nstiff, out, pre, fold,
                                stats)


@_jit
def _dopri5_one(p, P, B, Y0, t0, grid, ev, specials, rtol, atol, limits, auc_index,
                thr_out, thr_val, store_out, store_stride, metrics):
    _adaptive_patient(_dopri5_patient, outputs_into, 0, p, P, B, Y0, t0, grid, ev, specials,
                      rtol, atol, limits, auc_index, thr_out, thr_val, store_out,
                      store_stride, metrics)


@_jit
def _rodas_one(p, P, B, Y0, t0, grid, ev, specials, rtol, atol, limits, auc_index,
               thr_out, thr_val, store_out, store_stride, metrics):
    _adaptive_patient(_rodas_patient, outputs_into, 0, p, P, B, Y0, t0, grid, ev, specials,
                      rtol, atol, limits, auc_index, thr_out, thr_val, store_out,
                      store_stride, metrics)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def dopri5_cohort(P, B, Y0, t0, grid, ev_t, ev_rate, ev_bolus, spec_t, spec_kind,
                  spec_slot, rtol, atol, hmax, max_steps, nstiff, auc_index, thr_out, thr_val,
                  store_out, store_stride, cmax, tmax, auc, t_above, c_at, traj, status, stats):
    for p in numba.prange(P.shape[0]):
        _dopri5_one(p, P, B, Y0, t0, grid, (ev_t, ev_rate, ev_bolus),
                    (spec_t, spec_kind, spec_slot), rtol, atol, (hmax, max_steps, nstiff),
                    auc_index,
                    thr_out, thr_val, store_out, store_stride,
                    (cmax, tmax, auc, t_above, c_at, traj, status, stats))


@numba.njit(cache=True, parallel=True, error_model="numpy")
def rodas_cohort(P, B, Y0, t0, grid, ev_t, ev_rate, ev_bolus, spec_t, spec_kind,
                 spec_slot, rtol, atol, hmax, max_steps, nstiff, auc_index, thr_out, thr_val,
                 store_out, store_stride, cmax, tmax, auc, t_above, c_at, traj, status, stats):
    for p in numba.prange(P.shape[0]):
        _rodas_one(p, P, B, Y0, t0, grid, (ev_t, ev_rate, ev_bolus),
                   (spec_t, spec_kind, spec_slot), rtol, atol, (hmax, max_steps, nstiff),
                   auc_index,
                   thr_out, thr_val, store_out, store_stride,
                   (cmax, tmax, auc, t_above, c_at, traj, status, stats))
"""


def cohort_inputs(spec, theta: np.ndarray, covariates: dict):
    """Inputs of the generated cohort kernels for a chunk of patients.

    Returns ``(P, B, Y0, auc_index, kernels)``: per-patient parameter vectors
    ``[theta, covariates]``, the bolus map, initial states, the state holding each output's
    AUC (-1 for outputs that are not concentrations) and ``{"dopri5": ..., "rodas": ...}``.
    """
    ode = spec.ode
    n = theta.shape[0]
    cols = [np.asarray(theta, dtype=float)]
    for c in ode.covariate_names:
        v = covariates.get(c)
        if v is None:
            raise ModelError(
                f"{ode.file}: covariate `{c}` is used in [ode] and has no default: pass it"
            )
        cols.append(np.broadcast_to(np.asarray(v, dtype=float), (n,))[:, None])
    P = np.ascontiguousarray(np.concatenate(cols, axis=1))
    m = ode.module()
    Y0 = np.zeros((n, ode.n_aug))
    for i in range(n):
        m.initial_into(P[i], Y0[i])
    if not np.all(np.isfinite(Y0)):
        bad = int(np.nonzero(~np.all(np.isfinite(Y0), axis=1))[0][0])
        raise SimulationError(f"{ode.file}: non-finite initial state for patient {bad}")
    auc_index = np.full(len(ode.outputs), -1, dtype=np.int64)
    j = 0
    for k, o in enumerate(ode.outputs):
        if o.concentration:
            auc_index[k] = ode.n_states + 1 + j
            j += 1
    return P, ode.bolus_map(), Y0, auc_index, {"dopri5": m.dopri5_cohort, "rodas": m.rodas_cohort}


def output_scales(spec) -> tuple[np.ndarray, list[str]]:
    """Factor from internal units and the unit of each output of a model: ng/mL for
    concentrations (mg/L x 1000), the declared unit for other [ode] outputs."""
    if spec.ode is None:
        n = len(spec.output_names)
        return np.full(n, 1000.0), ["ng/mL"] * n
    outs = spec.ode.outputs
    return (
        np.array([1000.0 if o.concentration else 1.0 for o in outs]),
        [o.unit for o in outs],
    )


_LOCK = threading.Lock()
_MODULES: dict[str, Any] = {}


def _solver_hash() -> str:
    """Hash of the solver sources the generated code is compiled with.

    numba's cache of a generated module is invalidated by that module's own time stamp
    only, not by changes in the functions it calls; putting this hash into the generated
    text (and so into its file name) makes a solver change produce a new module.
    """
    h = hashlib.sha256()
    engine = Path(__file__).parent.parent / "engine"
    for name in ("__init__.py", "dopri5.py", "rosenbrock.py", "linear_rhs.py"):
        h.update((engine / "solvers" / name).read_bytes())
    for name in ("kernels_adaptive.py", "kernels.py"):  # the cohort wrappers' reduction
        h.update((engine / name).read_bytes())
    return h.hexdigest()[:16]


def _import_generated(source: str, digest: str):
    name = f"pkpd_ode_{digest}"
    with _LOCK:
        if name in _MODULES:
            return _MODULES[name]
        # The cache is trusted code (see pkpd.cache): private folders, checked before use;
        # numba's __pycache__ is created here so that it is private too.
        try:
            folder = cache.private_folder("ode")
            cache.private_folder("ode", "__pycache__")
        except OSError as exc:
            raise ModelError(
                f"cannot create the model code cache {cache_dir()} ({exc}); set "
                "PKPD_CACHE_DIR to a writable folder"
            ) from None
        path = folder / f"{name}.py"
        if os.path.lexists(path):
            cache.check_private_file(path)
        if not path.exists() or path.read_text() != source:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(source)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        cache.check_numba_cache(module, name)
        _MODULES[name] = module
        return module


# ----------------------------------------------------------------------------- reading


def _read_ode(ctx, ode: dict, params: dict, covariates: dict) -> OdeSystem:
    ctx.keys(
        ode,
        "ode",
        {"states", "intermediates", "derivatives", "outputs", "dose_state", "stiff", "notes"},
        {"states", "derivatives", "outputs", "dose_state"},
    )
    stiff = ode.get("stiff", False)
    if not isinstance(stiff, bool):
        raise ctx.err("ode.stiff", f"expected true or false, got {stiff!r}")
    states_t = ctx.table(ode, "ode.states")
    if not states_t:
        raise ctx.err("ode.states", "at least one state is required")
    taken: dict[str, str] = {}

    def claim(name, key):
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ctx.err(key, f"{name!r} is not a valid name (letters, digits, _; a letter first)")
        if name in RESERVED:
            raise ctx.err(key, f"{name!r} is reserved ({', '.join(sorted(RESERVED))})")
        if name in taken:
            raise ctx.err(key, f"{name!r} is already defined as {taken[name]}")
        taken[name] = key

    for p in params:
        claim(p, f"parameters.{p}")
    numeric_cov = {c for c, v in covariates.items() if not v.categorical}
    for c in covariates:
        claim(c, f"covariates.{c}")
    base_known = set(params) | numeric_cov
    state_names = list(states_t)
    for s in state_names:
        claim(s, f"ode.states.{s}")
    used_all: set[str] = set()
    states = []
    for s, key, d in ctx.entries(states_t, "ode.states", "expected a table with `initial`"):
        ctx.keys(d, key, {"initial", "unit", "description"})
        init = d.get("initial", 0.0)
        src, used = parse_expression(init, base_known, file=ctx.file, key=f"{key}.initial")
        used_all |= used
        states.append(
            OdeState(
                s,
                src,
                str(init),
                ctx.string(d, key, "unit", required=False, default=""),
                ctx.string(d, key, "description", required=False, default=s),
            )
        )
    known = base_known | set(state_names) | {TIME, RATE}
    inter_t = ctx.table(ode, "ode.intermediates", required=False)
    intermediates = []
    deps: dict[str, set[str]] = {}
    for n, text in inter_t.items():
        key = f"ode.intermediates.{n}"
        claim(n, key)
        src, used = parse_expression(text, known, file=ctx.file, key=key)
        intermediates.append((n, src, str(text)))
        deps[n] = used
        used_all |= used
        known = known | {n}  # later equations may use it; earlier ones may not
    der_t = ctx.table(ode, "ode.derivatives")
    derivatives = {}
    for s, text in der_t.items():
        key = f"ode.derivatives.{s}"
        if s not in state_names:
            raise ctx.err(key, f"{s!r} is not a state ({', '.join(state_names)})")
        src, used = parse_expression(text, known, file=ctx.file, key=key)
        derivatives[s] = (src, str(text))
        deps[f"d/dt {s}"] = used
        used_all |= used
    for s in state_names:
        if s not in derivatives:
            raise ctx.err(f"ode.derivatives.{s}", "missing: every state needs a derivative")
    dose = ctx.string(ode, "ode", "dose_state")
    if dose not in state_names:
        raise ctx.err("ode.dose_state", f"{dose!r} is not a state ({', '.join(state_names)})")

    def closure(names):
        out, todo = set(), list(names)
        while todo:
            n = todo.pop()
            if n in out:
                continue
            out.add(n)
            todo.extend(deps.get(n, ()))
        return out

    if RATE not in closure(deps[f"d/dt {dose}"]):
        raise ctx.err(
            f"ode.derivatives.{dose}",
            f"the dose state's derivative must contain the infusion input `{RATE}` "
            "(mg/h), or infusions would be ignored",
        )
    outs_t = ctx.table(ode, "ode.outputs")
    if not outs_t:
        raise ctx.err("ode.outputs", "at least one output is required")
    outputs = []
    for o, key, d in ctx.entries(outs_t, "ode.outputs", "expected a table with `expression`"):
        ctx.keys(d, key, {"expression", "concentration", "unit", "long_name"}, {"expression"})
        if not _NAME_RE.fullmatch(o):
            raise ctx.err(key, f"{o!r} is not a valid output name")
        if o in GENERATED_NAMES or o.startswith(GENERATED_PREFIXES):
            raise ctx.err(
                key,
                f"{o!r} is taken by a variable the dataset generates (`time`, `dose_given`, "
                "`auc_<output>`, `state_<state>`); choose another output name",
            )
        conc = d.get("concentration", False)
        if not isinstance(conc, bool):
            raise ctx.err(f"{key}.concentration", f"expected true or false, got {conc!r}")
        unit = ctx.string(d, key, "unit", required=False, default="")
        if not conc and unit and _is_concentration_unit(unit):
            raise ctx.err(
                f"{key}.unit",
                f"{unit!r} is a concentration unit but `concentration` is false: set "
                "`concentration = true` (the expression in mg/L, reported in ng/mL with its "
                "AUC) or give a unit that is not a concentration",
            )
        if conc and unit and unit not in ("mg/L", "ng/mL"):
            raise ctx.err(
                f"{key}.unit",
                f"{unit!r}: a concentration output is an expression in mg/L (reported in "
                "ng/mL); leave `unit` out or set it to 'mg/L'",
            )
        src, used = parse_expression(d["expression"], known, file=ctx.file, key=f"{key}.expression")
        if RATE in closure(used):
            raise ctx.err(
                f"{key}.expression",
                f"an output is a function of the state; it may not depend on `{RATE}`",
            )
        used_all |= used
        outputs.append(
            OdeOutput(
                o,
                src,
                str(d["expression"]),
                conc,
                "ng/mL" if conc else unit,
                ctx.string(d, key, "long_name", required=False, default=o),
            )
        )
    unused = [p for p in params if p not in closure(used_all)]
    if unused:
        raise ctx.err(
            f"parameters.{unused[0]}", "defined but not used by any [ode] equation (a typo?)"
        )
    all_used = closure(used_all)
    return OdeSystem(
        file=ctx.file,
        states=states,
        intermediates=intermediates,
        derivatives=derivatives,
        outputs=outputs,
        dose_state=dose,
        stiff=stiff,
        param_names=list(params),
        covariate_names=[c for c in covariates if c in numeric_cov and c in all_used],
        uses_time=TIME in all_used,
        rate_dependent=frozenset(n for n, _, _ in intermediates if RATE in closure(deps[n])),
    )


def ode_spec_from_dict(cls, data: dict, file):
    """Validate a model file with an ``[ode]`` section into a :class:`~pkpd.inputs.model.ModelSpec`.

    Metadata, covariates, parameters, variability and residual error are read by the
    same functions as for linear models; the structure is the ``[ode]`` section.
    """
    from pkpd.inputs import model as mdl

    ctx = mdl._Ctx(file if file is not None else "<model>")
    top = {
        "schema_version",
        "model",
        "analytes",
        "covariates",
        "parameters",
        "variability",
        "residual",
        "ode",
    }
    for k in ("compartments", "flows", "chains"):
        if k in data:
            raise ctx.err(k, "a model with an [ode] section writes its structure as equations")
    ctx.keys(data, "", top, {"schema_version", "model", "parameters", "ode"})
    mdl._check_names(ctx, data)
    meta = cls._read_metadata(ctx, data)
    drug = meta["drug"]
    if "analytes" in data:
        analytes = cls._read_analytes(ctx, ctx.table(data, "analytes"))
    else:
        analytes = {"drug": {"role": "parent", "molar_mass": None, "description": drug}}
    parent = next(a for a, v in analytes.items() if v["role"] == "parent")
    covariates = cls._read_covariates(ctx, ctx.table(data, "covariates", required=False))
    parameters = cls._read_parameters(
        ctx, ctx.table(data, "parameters"), covariates, kinds=mdl._ODE_PARAM_KINDS
    )
    ode = _read_ode(ctx, ctx.table(data, "ode"), parameters, covariates)
    outputs = [mdl.Output(o.name, ode.dose_state, parent, o.long_name, False) for o in ode.outputs]
    variability = cls._read_variability(ctx, data.get("variability", []), parameters)
    residual = cls._read_residual(
        ctx, ctx.table(data, "residual", required=False), outputs, analytes
    )
    spec = cls(
        file=Path(file) if file is not None else None,
        **meta,
        analytes=analytes,
        parameters=parameters,
        covariates=covariates,
        compartments={},
        flows=[],
        variability=variability,
        residual=residual,
        outputs=outputs,
        dose_compartment=ode.dose_state,
        parent=parent,
        raw=data,
        ode=ode,
    )
    spec.param_names = list(parameters)
    spec.analyte_names = list(analytes)
    spec.comp_names = [s.name for s in ode.states]
    spec.n_comp = ode.n_states
    spec.n_states = ode.n_aug
    spec.theta_typical = np.array([p.value for p in parameters.values()])
    spec._check_theta(spec.theta_typical, "typical values")
    return spec


# ----------------------------------------------------------------------------- simulation


def solve(spec, theta, covariates, ev, t, method, rtol, atol, max_steps=None):
    """Solve an ``[ode]`` model for one patient.

    Returns ``(Y, outputs, solver_attrs)``: the augmented state ``(n_t, n_aug)``, the
    outputs ``(n_t, n_out)`` in internal units, and dataset attributes naming the solver
    and its counters. `method` ``"auto"`` is Dopri5, or Rodas4 when the file says
    ``stiff = true`` or Dopri5 detects stiffness.
    """
    from pkpd.engine.solvers import (
        STATUS_MESSAGES,
        STATUS_OK,
        STATUS_OUTPUT_NONFINITE,
        STATUS_STIFF,
    )
    from pkpd.engine.solvers import registry as reg

    ode = spec.ode
    p = ode.parameter_vector(theta, covariates)
    y0 = ode.initial_state(p)
    b = ode.bolus_map()
    t0 = min(0.0, float(ev.t[0]) if ev.t.size else 0.0, float(t[0]))
    kw = {"t0": t0, "rtol": rtol, "atol": atol}
    if max_steps is not None:
        kw["max_steps"] = max_steps
    note = ""
    if method == "auto":
        chosen = "rodas" if ode.stiff else "dopri5"
        note = "auto: the model file says stiff = true" if ode.stiff else "auto: nonlinear model"
    else:
        chosen = method
    Y, status, stats = reg.run(chosen, ode.kernels(), p, b, y0, ev.t, ev.rate, ev.bolus, t, **kw)
    if status == STATUS_STIFF and method == "auto":
        first = stats
        Y, status, stats = reg.run(
            "rodas", ode.kernels(), p, b, y0, ev.t, ev.rate, ev.bolus, t, **kw
        )
        note = (
            f"auto: Dopri5 detected stiffness after {first['nsteps']} steps "
            f"({first['nfev']} evaluations); solved again with Rodas4"
        )
        chosen = "rodas"
    if status != STATUS_OK:
        raise SimulationError(
            f"{spec.file or spec.name}: {reg.SOLVERS[chosen].method} failed (status {status}): "
            f"{STATUS_MESSAGES.get(status, 'unknown status')}"
        )
    O = ode.evaluate_outputs(t, Y, p)
    bad = ~np.isfinite(O)
    if bad.any():
        r, j = (int(i[0]) for i in np.nonzero(bad))
        raise SimulationError(
            f"{spec.file or spec.name}: output `{ode.outputs[j].name}` = "
            f"{ode.outputs[j].text!r} is {O[r, j]} at t = {t[r]:g} h "
            f"(status {STATUS_OUTPUT_NONFINITE}): {STATUS_MESSAGES[STATUS_OUTPUT_NONFINITE]}"
        )
    return Y, O, solver_attrs(chosen, rtol, atol, stats, note)


def solver_attrs(method: str, rtol, atol, stats: dict, note: str = "") -> dict:
    """Dataset attributes of an adaptive solve: solver, tolerances and counters."""
    from pkpd.engine.solvers.registry import SOLVERS

    info = SOLVERS[method]
    attrs = {
        "solver": f"{info.description} ({info.reference})",
        "solver_method": method,
        "solver_rtol": str(rtol),
        "solver_atol": str(atol),
    }
    attrs.update({f"solver_{k}": v for k, v in stats.items()})
    if note:
        attrs["solver_note"] = note
    return attrs


def dataset_variables(spec, theta, covariates, ev, t, method, rtol, atol):
    """Dataset variables and solver attributes of one patient of an ``[ode]`` model.

    Outputs (concentrations in ng/mL, others in their declared unit), ``auc_<output>`` of
    each concentration output in ng*h/mL, every state as ``state_<name>`` and
    ``dose_given`` in mg.
    """
    if method == "exact":
        raise ValueError(
            f"`method` 'exact' is for linear compartment models; {spec.name!r} is a "
            "nonlinear [ode] model: use 'auto', 'dopri5' or 'rodas'"
        )
    from pkpd.running.simulate import MG_L_TO_NG_ML

    ode = spec.ode
    Y, O, attrs = solve(spec, theta, covariates, ev, t, method, rtol, atol)
    data = {}
    for j, o in enumerate(ode.outputs):
        scale = MG_L_TO_NG_ML if o.concentration else 1.0
        data[o.name] = ("time", O[:, j] * scale, {"units": o.unit, "long_name": o.long_name})
    for j, o in enumerate(ode.auc_outputs()):
        data[f"auc_{o.name}"] = (
            "time",
            Y[:, ode.n_states + 1 + j] * MG_L_TO_NG_ML,
            {"units": "ng*h/mL", "long_name": f"cumulative AUC of {o.name} from the start"},
        )
    for i, st in enumerate(ode.states):
        data[f"state_{st.name}"] = (
            "time",
            Y[:, i],
            {"units": st.unit, "long_name": st.description},
        )
    data["dose_given"] = (
        "time",
        Y[:, ode.n_states],
        {"units": "mg", "long_name": "cumulative amount administered"},
    )
    from pkpd.running.simulate import _record_bolus_limits

    p = ode.parameter_vector(theta, covariates)
    bmap = ode.bolus_map()
    scale = np.array([MG_L_TO_NG_ML if o.concentration else 1.0 for o in ode.outputs])

    def shifted(idx, dose):
        Ys = Y[idx] + dose[:, None] * bmap[None, :]
        return ode.evaluate_outputs(t[idx], Ys, p) * scale[None, :]

    _record_bolus_limits(data, [o.name for o in ode.outputs], t, ev, shifted)
    return data, attrs
