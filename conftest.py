"""Every fenced code block of the Markdown documentation is a test (tests/doc_examples.py).

pytest collects the Markdown files named in ``testpaths`` (pyproject.toml) and those under
the test paths; Sybil turns each ``python``, ``sh``/``bash``/``console`` and ``toml`` block
into one test item, and ``<!-- skip: next "reason" -->`` marks a block that must not run.
"""

from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

from tests.doc_examples import (
    SHELL_LANGUAGES,
    document_setup,
    document_teardown,
    evaluate_shell,
    evaluate_toml,
)

pytest_collect_file = Sybil(
    parsers=[
        SkipParser(),
        PythonCodeBlockParser(),
        *(CodeBlockParser(language, evaluate_shell) for language in SHELL_LANGUAGES),
        CodeBlockParser("toml", evaluate_toml),
    ],
    patterns=["*.md"],
    setup=document_setup,
    teardown=document_teardown,
).pytest()
