"""The shared library-file reader: every message names the file, the key, the value and what
was expected; one tag vocabulary with per-kind subsets."""

import re

import pytest

from pkpd.errors import ModelError, RiskError
from pkpd.inputs import population, reader
from pkpd.inputs.reader import LITERATURE_TAGS, POPULATION_TAGS, TAGS, Provenance, Reader

R = Reader("lib/x.toml", RiskError)


def raises(fragment, fn, *args, **kw):
    with pytest.raises(RiskError, match=re.escape(fragment)) as info:
        fn(*args, **kw)
    assert str(info.value).startswith("lib/x.toml: ")
    return str(info.value)


def test_one_vocabulary_with_subsets_per_file_kind():
    assert set(LITERATURE_TAGS) <= set(TAGS) and set(POPULATION_TAGS) <= set(TAGS)
    assert set(LITERATURE_TAGS) | set(POPULATION_TAGS) == set(TAGS)
    assert population.TAGS == {t: TAGS[t] for t in POPULATION_TAGS}
    assert reader.SAMPLING_SITES[0] == "arterial"


def test_keys_tables_and_choices_name_file_key_value_expected():
    raises("`a.colour`: unknown key; expected one of b, c", R.keys, {"colour": 1}, "a", {"b", "c"})
    raises("`a.c`: missing (required)", R.keys, {"b": 1}, "a", {"b", "c"}, ("c",))
    raises("`a`: expected a table, got str 'x'", R.keys, "x", "a", {"b"})
    raises("`t`: missing (expected a table)", R.table, {}, "", "t")
    assert R.table({}, "", "t", required=False) is None
    raises("`a.site`: 'capillary'; expected one of arterial, venous", R.choice,
           {"site": "capillary"}, "a", "site", ("arterial", "venous"))  # fmt: skip
    assert R.choice({}, "a", "site", ("x", "y"), default="x") == "x"
    raises("`schema_version`: 2 unsupported; expected 1", R.schema_version, {"schema_version": 2})
    raises("`schema_version`: True unsupported", R.schema_version, {"schema_version": True})
    raises("`a`: give exactly one of `rate` and `total` (found ['rate', 'total'])",
           R.exactly_one, {"rate": 1, "total": 2}, "a", ("rate", "total"))  # fmt: skip
    assert R.exactly_one({"total": 2}, "a", ("rate", "total")) == "total"
    raises("`risk.name`: 'y' differs from the file name 'x'", R.name_of_file, "y", "risk.name")


def test_values_numbers_strings_and_quantities():
    raises("`a.v`: expected a finite number, got 'steep'", R.number, {"v": "steep"}, "a", "v")
    raises("`a.v`: expected a finite number, got True", R.number, {"v": True}, "a", "v")
    raises("`a.v`: expected a finite number, got nan", R.number, {"v": float("nan")}, "a", "v")
    raises("`a.v`: missing (expected a number)", R.number, {}, "a", "v")
    assert R.number({"v": 2}, "a", "v") == 2.0
    raises("`a.n`: expected an integer, got 2.5", R.value, {"n": 2.5}, "a", "n", int, "an integer")
    raises(
        "`a.n`: expected an integer, got True", R.value, {"n": True}, "a", "n", int, "an integer"
    )
    raises("`a.s`: expected a non-empty string, got ' '", R.string, {"s": " "}, "a", "s")
    assert R.string({"s": " "}, "a", "s", required=False) == " "
    strict = Reader("lib/x.toml", RiskError, blank_optional=False)
    raises("`a.s`: expected a non-empty string", strict.string, {"s": " "}, "a", "s", False)
    raises(
        "`a.notes`: expected a list of strings, got 'x'", R.strings, {"notes": "x"}, "a", "notes"
    )
    raises("`a.r`: expected [low, high] times, got [1]", R.pair, [1], "a.r", "[low, high] times")
    assert R.quantity("2 h", "time", "a.t") == 2.0
    raises("'-1 h' must be > 0", R.quantity, "-1 h", "time", "a.t", positive=True)
    msg = raises("`a.t`", R.quantity, "2 mg", "time", "a.t")
    assert "2 mg" in msg


def test_provenance_rules():
    d = {"source": "Paper 2020, table 2", "tag": "paper"}
    assert R.provenance(d, "p") == Provenance("Paper 2020, table 2", "paper", "")
    assert R.provenance({}, "p", required=False) is None
    raises(
        "`p.source`: missing: every number must cite its source",
        R.provenance,
        {"tag": "paper"},
        "p",
    )
    raises("`p.tag`: 'guess' is not a verification tag; expected one of paper, code",
           R.provenance, {"source": "x", "tag": "guess"}, "p")  # fmt: skip
    raises("`p.note`: missing: an assumed value must say why it is there",
           R.provenance, {"source": "x", "tag": "assumed"}, "p")  # fmt: skip
    # a tag-only table (no citation) whose justification says why
    exp = {"tag": "assumed", "justification": "the peak drives the event"}
    assert (
        R.provenance(exp, "e", source=False, note_keys=("note", "justification")).tag == "assumed"
    )
    raises("'illustrative' is not a verification tag", R.provenance,
           {"source": "x", "tag": "illustrative"}, "p")  # fmt: skip
    pop = Reader("p.toml", ModelError, tags=POPULATION_TAGS, note_tags=("assumed", "illustrative"))
    with pytest.raises(ModelError, match=r"`p\.note`: .*'illustrative'"):
        pop.provenance({"source": "x", "tag": "illustrative"}, "p")


def test_no_file_gives_messages_starting_with_the_key():
    with pytest.raises(ModelError, match=r"^`a\.b`: unknown key"):
        Reader(None).keys({"b": 1}, "a", set())
