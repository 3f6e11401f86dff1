"""One reader for every library file: models, PD endpoints, populations, risk models, regimens.

A :class:`Reader` wraps one parsed TOML document (or a dict built by hand) with its file name;
its accessors take the table being read, the key path of that table (``"parameters.V1"``,
``"calibration[2]"``) and the key inside it, and raise the file kind's error class (e.g.
:class:`~pkpd.errors.ModelError`) with a message naming the file, the full key, the offending
value and what was expected::

    models/pd/x.toml: `parameters.c50.value`: expected a finite number, got 'steep'

Provenance tags form one vocabulary, :data:`TAGS`; each kind of file accepts a subset of it
(:data:`LITERATURE_TAGS` for PK models, PD endpoints and risk models; :data:`POPULATION_TAGS`
for populations, whose placeholders are tagged ``illustrative``).

Schema library: none. pydantic, msgspec, jsonschema, attrs/cattrs and marshmallow were
considered (all installable). Their generic messages ("Input should be a valid number",
"Expected `float`, got `str` - at `$.age.mean`") either drop the value or the expectation,
or use another location syntax, so each message would have to be caught and rewritten; and
most checks here are not types but units (``parse_quantity``), provenance rules, "exactly one
of", cross-key and plausibility checks, which a schema library takes only as hand-written
validators. The gain in lines would be small, the cost a runtime dependency and a second
place where a file's rules live; these accessors keep each rule and its message in one line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from pkpd.errors import ModelError, UnitError, where
from pkpd.inputs.units import Parsed, parse_quantity, time_ref

__all__ = [
    "LITERATURE_TAGS",
    "POPULATION_TAGS",
    "SAMPLING_SITES",
    "TAGS",
    "Provenance",
    "Reader",
]

#: Where the concentrations a model or PD endpoint was estimated from were sampled.
SAMPLING_SITES = ("arterial", "venous", "plasma (site not stated)", "not reported")

#: Verification tags of library numbers (one vocabulary for every kind of file).
TAGS = {
    "paper": "verified in paper",
    "code": "verified in cited code",
    "code-unconfirmed": "read in public code that does not cite the paper's table",
    "derived": "derived from verified values",
    "assumed": "assumed (not a literature value)",
    "illustrative": "illustrative placeholder, no published value found (see note)",
}
#: Tags accepted in PK model, PD endpoint and risk model files.
LITERATURE_TAGS = ("paper", "code", "code-unconfirmed", "derived", "assumed")
#: Tags accepted in population files.
POPULATION_TAGS = ("paper", "code", "derived", "assumed", "illustrative")


class Provenance(NamedTuple):
    """Where one number comes from: citation text, verification tag, optional note."""

    source: str
    tag: str
    note: str = ""


class Reader:
    """Location-aware reading of one library file.

    Parameters
    ----------
    file : str, Path or None
        Named in every message (``None``: messages start with the key).
    error : type
        Exception class raised (the file kind's: ModelError, PopulationError, ...).
    tags : tuple of str
        The verification tags (keys of :data:`TAGS`) this kind of file accepts.
    note_tags : tuple of str
        Tags whose numbers must say why in a ``note``.
    blank_optional : bool
        Whether an optional string may be blank (population files refuse blank text).
    """

    def __init__(
        self,
        file,
        error: type[Exception] = ModelError,
        *,
        tags: tuple[str, ...] = LITERATURE_TAGS,
        note_tags: tuple[str, ...] = ("assumed",),
        blank_optional: bool = True,
    ):
        self.file = None if file is None else str(file)
        self.error = error
        self.tags = tags
        self.note_tags = note_tags
        self.blank_optional = blank_optional

    # ------------------------------------------------------------------ locations

    def err(self, key: str, msg: str) -> Exception:
        """The error for `key` (a full key path; "" for the document)."""
        return self.error(f"{where(self.file, key)}{msg}")

    @staticmethod
    def at(key: str, k: str) -> str:
        """The key path of `k` inside the table at `key`."""
        return f"{key}.{k}" if key else k

    # ------------------------------------------------------------------ tables and keys

    def table(self, d: dict, key: str, k: str, required: bool = True) -> dict | None:
        """The sub-table ``d[k]``; None when optional and absent."""
        v = d.get(k)
        full = self.at(key, k)
        if v is None:
            if required:
                raise self.err(full, "missing (expected a table)")
            return None
        if not isinstance(v, dict):
            raise self.err(full, f"expected a table, got {type(v).__name__} {v!r}")
        return v

    def entries(self, tab: dict, key: str):
        """Yield ``(name, key, table)`` for each sub-table of `tab`, checking its type."""
        for name, d in tab.items():
            full = self.at(key, name)
            if not isinstance(d, dict):
                raise self.err(full, f"expected a table, got {type(d).__name__} {d!r}")
            yield name, full, d

    def keys(self, d: Any, key: str, allowed, required=()) -> None:
        """Refuse a non-table, unknown keys and missing required keys (a set is checked
        in sorted order, a tuple in its own order)."""
        if not isinstance(d, dict):
            raise self.err(key, f"expected a table, got {type(d).__name__} {d!r}")
        for k in d:
            if k not in allowed:
                raise self.err(
                    self.at(key, k), f"unknown key; expected one of {', '.join(sorted(allowed))}"
                )
        for k in sorted(required) if isinstance(required, set | frozenset) else required:
            if k not in d:
                raise self.err(self.at(key, k), "missing (required)")

    def exactly_one(self, d: dict, key: str, names: tuple[str, ...], expected: str = "") -> str:
        """The one key of `names` present in `d` (e.g. ``rate`` or ``total``)."""
        found = [k for k in names if k in d]
        if len(found) != 1:
            expected = expected or " and ".join(f"`{k}`" for k in names)
            raise self.err(key, f"give exactly one of {expected} (found {found or 'none'})")
        return found[0]

    def schema_version(self, data: dict, expected: int = 1) -> int:
        if "schema_version" not in data:
            raise self.err("schema_version", f"missing (expected {expected})")
        v = data["schema_version"]
        if isinstance(v, bool) or v != expected:
            raise self.err("schema_version", f"{v!r} unsupported; expected {expected}")
        return expected

    def name_of_file(self, name: str, key: str) -> None:
        """Refuse a ``name`` that differs from the file's stem (when read from a file)."""
        if self.file is not None and Path(self.file).stem != name:
            raise self.err(key, f"{name!r} differs from the file name {Path(self.file).stem!r}")

    # ------------------------------------------------------------------ values

    def value(self, d: dict, key: str, k: str, types, expected: str, default=None):
        """``d[k]`` of type `types` (bools refused unless `types` is bool); required unless
        a `default` is given."""
        v = d.get(k, default)
        full = self.at(key, k)
        if v is None:
            raise self.err(full, f"missing (expected {expected})")
        if not isinstance(v, types) or (isinstance(v, bool) and types is not bool):
            raise self.err(full, f"expected {expected}, got {v!r}")
        return v

    def string(
        self,
        d: dict,
        key: str,
        k: str,
        required: bool = True,
        default: str | None = "",
        nonblank: bool | None = None,
    ) -> str | None:
        """A string; blank text is refused when required or `nonblank` (default: when
        required, or always if the file kind refuses blank optional strings)."""
        v = d.get(k)
        full = self.at(key, k)
        if v is None:
            if required:
                raise self.err(full, "missing (expected a string)")
            return default
        if nonblank is None:
            nonblank = required or not self.blank_optional
        if not isinstance(v, str) or (nonblank and not v.strip()):
            raise self.err(full, f"expected a non-empty string, got {v!r}")
        return v

    def strings(self, d: dict, key: str, k: str) -> list[str]:
        """An optional list of strings (``[]`` when absent)."""
        v = d.get(k, [])
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise self.err(self.at(key, k), f"expected a list of strings, got {v!r}")
        return v

    def choice(self, d: dict, key: str, k: str, choices, default: str | None = None) -> str:
        """A string among `choices`."""
        v = self.string(d, key, k, required=default is None, default=default)
        if v not in choices:
            raise self.err(self.at(key, k), f"{v!r}; expected one of {', '.join(choices)}")
        return v

    def real(self, v: Any, key: str) -> float:
        """`v` as a finite float (bools, text, nan and inf refused)."""
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.err(key, f"expected a finite number, got {v!r}")
        return float(v)

    def number(self, d: dict, key: str, k: str, default=None) -> float:
        """A required finite number (or `default` when absent)."""
        v = d.get(k, default)
        if v is None:
            raise self.err(self.at(key, k), "missing (expected a number)")
        return self.real(v, self.at(key, k))

    def pair(self, v: Any, key: str, expected: str = "[low, high]") -> tuple[Any, Any]:
        """A two-element list, e.g. a range (items unchecked)."""
        if not isinstance(v, list) or len(v) != 2:
            raise self.err(key, f"expected {expected}, got {v!r}")
        return v[0], v[1]

    def parsed(self, v: Any, kind: str, key: str, **kw) -> Parsed:
        """A quantity with a unit (:func:`~pkpd.inputs.units.parse_quantity`), converted to
        internal units; a unit error is raised as this file's error."""
        try:
            return parse_quantity(v, kind, file=self.file, key=key, **kw)
        except UnitError as exc:
            raise self.error(str(exc)) from None

    def anchored_time(self, v: Any, key: str, anchors) -> tuple[str | None, float]:
        """A time at `key`: ``(None, h)``, or ``(event, offset h)`` for an event declared
        under [anchors] (`anchors`: the declared names)."""
        try:
            anchor, off = time_ref(v, file=self.file, key=key)
        except UnitError as exc:
            raise self.error(str(exc)) from None
        if anchor is not None and anchor not in anchors:
            raise self.err(
                key,
                f"{v!r} is neither a time such as '4 h' nor an event declared under "
                f"[anchors] ({', '.join(anchors) or 'none declared'})",
            )
        return anchor, off

    def quantity(self, v: Any, kind: str, key: str, positive: bool = False, **kw) -> float:
        """The internal value of a quantity; `positive` refuses values <= 0."""
        x = self.parsed(v, kind, key, **kw).value
        if positive and not x > 0:
            raise self.err(key, f"{v!r} must be > 0")
        return x

    # ------------------------------------------------------------------ provenance

    def tag(self, d: dict, key: str) -> str:
        """The verification tag of table `d`, one of this file kind's :attr:`tags`."""
        tag = self.string(d, key, "tag")
        if tag not in self.tags:
            raise self.err(
                self.at(key, "tag"),
                f"{tag!r} is not a verification tag; expected one of {', '.join(self.tags)}",
            )
        return tag

    def provenance(
        self,
        d: dict,
        key: str,
        required: bool = True,
        source: bool = True,
        note_keys: tuple[str, ...] = ("note",),
    ) -> Provenance | None:
        """``(source, tag, note)`` of table `d`.

        Not `required`: None when `d` has neither ``source`` nor ``tag``. `source` False:
        the table carries a tag but no citation (``source`` is then ""). A tag of
        :attr:`note_tags` needs a ``note`` (or another of `note_keys`) saying why.
        """
        if not required and "source" not in d and "tag" not in d:
            return None
        src = ""
        if source:
            if "source" not in d:
                raise self.err(self.at(key, "source"), "missing: every number must cite its source")
            src = self.string(d, key, "source")
        tag = self.tag(d, key)
        note = self.string(d, key, "note", required=False)
        if tag in self.note_tags and not any(d.get(k) for k in note_keys):
            raise self.err(
                self.at(key, "note"),
                f"missing: an {tag} value must say why it is there (tag {tag!r})",
            )
        return Provenance(src, tag, note)
