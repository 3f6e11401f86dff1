"""The equations of an ``[ode]`` section: checked against a whitelist and translated to
Python source, without ``eval``.

Each equation is parsed with :func:`ast.parse` (``mode="eval"``) and walked by a
whitelist: numbers, the names the model defines, ``+ - * / **``, unary minus,
comparisons, ``and``/``or``/``not``, conditional expressions (``a if c else b``) and the
functions ``exp log sqrt pow min max abs``. Anything else (attribute access, subscripts,
lambdas, other calls, strings, ``__import__``) is an error naming the file, the equation
key and the offending name. The checked tree is printed back as Python source of a
numba function (:mod:`pkpd.inputs.model.codegen`); user names are renamed
(``v_<name>``), so they cannot shadow anything.
"""

from __future__ import annotations

import ast
import math
import re

from pkpd.errors import ModelError

__all__ = ["FUNCTIONS", "MAX_DEPTH", "RATE", "RESERVED", "TAFD", "TIME", "parse_expression"]

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
#: Time after the patient's first dose (h): ``max(t - t_first_dose, 0)``, where
#: ``t_first_dose`` is the time of the first bolus or infusion start of the regimen (0
#: before that dose and throughout a regimen without doses). The usual pharmacometric name
#: (TAFD, rxode2's ``tafd()``); ``tad``, the time after the most recent dose, is not
#: provided.
TAFD = "tafd"
RESERVED = {TIME, TAFD, RATE, *FUNCTIONS, "e", "pi", "inf", "nan"}
#: Dataset variables a simulation generates besides the outputs (see
#: :func:`pkpd.inputs.model.solve.dataset_variables`): an output may not take these names or
#: prefixes.
GENERATED_NAMES = frozenset({"time", "dose_given"})
GENERATED_PREFIXES = ("auc_", "state_")
# ASCII only, matched whole (``fullmatch``: ``$`` would accept a trailing newline).
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
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
_ALLOWED_WORDS = (
    "numbers, model names, + - * / **, comparisons, and/or/not, "
    "'a if condition else b', and the functions " + ", ".join(FUNCTIONS)
)


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
    tree = _parse(text, err)
    _check_names(tree, known, err)
    translator = _Translator(text, known, err)
    return translator.walk(tree.body), translator.used


def _parse(text: str, err) -> ast.Expression:
    """The syntax tree of a non-empty ASCII equation no deeper than :data:`MAX_DEPTH`."""
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
    return tree


def _check_names(tree, known: set[str], err) -> None:
    """Unknown names first, so the offending name is reported even inside a forbidden
    construct (``__import__('os').system`` names ``__import__``)."""
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


def _name_of(node) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # pragma: no cover - unparse handles every parsed node
        return type(node).__name__


class _Translator:
    """Walks a checked tree and prints it as Python source over ``v_<name>`` variables,
    collecting the model names it uses; any node outside the whitelist is an error."""

    def __init__(self, text: str, known: set[str], err):
        self.text, self.known, self.err = text, known, err
        self.used: set[str] = set()

    def walk(self, node) -> str:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            word = _NODE_WORDS.get(type(node), type(node).__name__)
            raise self.err(f"{word} is not allowed ({_name_of(node)!r}); allowed: {_ALLOWED_WORDS}")
        return method(node)

    def _Constant(self, node) -> str:
        v = node.value
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.err(
                f"constant {v!r} is not allowed (only numbers); allowed: {_ALLOWED_WORDS}"
            )
        try:
            f = float(v)
        except OverflowError:  # an integer literal beyond the float range
            f = math.inf
        if not math.isfinite(f):  # 1e999 parses as inf
            written = ast.get_source_segment(self.text.strip(), node) or _name_of(node)
            raise self.err(
                f"the number {_short(written)!r} is not a finite float (at most about 1.8e308)"
            )
        return repr(f)

    def _Name(self, node) -> str:
        nm = node.id
        if nm.startswith("_") or nm not in self.known:
            if nm in FUNCTIONS:
                raise self.err(f"function {nm!r} used as a value (call it: {nm}(...))")
            raise self.err(f"unknown name {nm!r}; known names: {', '.join(sorted(self.known))}")
        self.used.add(nm)
        return f"v_{nm}"

    def _BinOp(self, node) -> str:
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise self.err(
                f"operator {type(node.op).__name__} is not allowed in "
                f"{_name_of(node)!r}; allowed: {_ALLOWED_WORDS}"
            )
        return f"({self.walk(node.left)}) {op} ({self.walk(node.right)})"

    def _UnaryOp(self, node) -> str:
        if isinstance(node.op, ast.USub):
            return f"(-{self.walk(node.operand)})"
        if isinstance(node.op, ast.UAdd):
            return self.walk(node.operand)
        if isinstance(node.op, ast.Not):
            return f"(not {self.walk(node.operand)})"
        raise self.err(f"operator {type(node.op).__name__} is not allowed in {_name_of(node)!r}")

    def _BoolOp(self, node) -> str:
        op = " and " if isinstance(node.op, ast.And) else " or "
        return "(" + op.join(f"({self.walk(v)})" for v in node.values) + ")"

    def _Compare(self, node) -> str:
        parts = [f"({self.walk(node.left)})"]
        for o, c in zip(node.ops, node.comparators, strict=True):
            sym = _CMPOPS.get(type(o))
            if sym is None:
                raise self.err(
                    f"comparison {type(o).__name__} is not allowed in {_name_of(node)!r}"
                )
            parts.append(f"{sym} ({self.walk(c)})")
        return "(" + " ".join(parts) + ")"

    def _IfExp(self, node) -> str:
        return (
            f"(({self.walk(node.body)}) if ({self.walk(node.test)}) "
            f"else ({self.walk(node.orelse)}))"
        )

    def _Call(self, node) -> str:
        if not isinstance(node.func, ast.Name):
            raise self.err(
                f"call of {_name_of(node.func)!r} is not allowed; allowed functions: "
                f"{', '.join(FUNCTIONS)}"
            )
        fname = node.func.id
        if fname not in FUNCTIONS:
            raise self.err(
                f"call of {fname!r} is not allowed; allowed functions: {', '.join(FUNCTIONS)}"
            )
        if node.keywords:
            raise self.err(f"keyword arguments are not allowed in the call of {fname!r}")
        code, nargs = FUNCTIONS[fname]
        if (nargs is not None and len(node.args) != nargs) or (
            nargs is None and len(node.args) < 2
        ):
            want = nargs if nargs is not None else "2 or more"
            raise self.err(f"{fname}() takes {want} arguments, got {len(node.args)}")
        return f"{code}(" + ", ".join(self.walk(a) for a in node.args) + ")"


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
