"""The runner of the documentation's code blocks (tests/doc_examples.py, conftest.py).

It must be able to fail: a failing command, a wrong quoted output, a command that is not
`pkpd`, invalid TOML and an example that needs the repository root all fail; a skip marker
skips visibly; and `make test`'s configuration collects every block of the Markdown files.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.doc_examples import (
    DESIGN_CAP,
    PATIENT_CAP,
    SHELL_LANGUAGES,
    DocExampleError,
    check_quoted_output,
    check_toml_block,
    lower_patients,
    parse_shell,
    prepare,
    run_shell_block,
    shrink_design,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "models/README.md", "benchmarks/README.md", "tests/README.md"]
DOCS += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "pkpd").rglob("*.md"))]
FENCE = re.compile(r"^[ \t]*(```+)(\S*)", re.MULTILINE)


def test_continuations_are_joined_and_comments_dropped():
    source = textwrap.dedent(
        """\
        # a comment line
        pkpd simulate m r --weight 70 \\
             --out "a b.nc" \\
             --threshold cp=40ng/mL   # trailing comment with --patients 5

        pkpd models show x#y
        """
    )
    commands = parse_shell(source)
    assert [c.argv for c in commands] == [
        ["pkpd", "simulate", "m", "r", "--weight", "70", "--out", "a b.nc",
         "--threshold", "cp=40ng/mL"],
        ["pkpd", "models", "show", "x#y"],
    ]  # fmt: skip
    assert [c.line for c in commands] == [1, 5]
    assert [c.expected_status for c in commands] == [0, 0]


def test_console_prompt_and_announced_exit_status():
    commands = parse_shell("$ pkpd simulate nosuchmodel r   # exits 2\n$ pkpd models\n")
    assert [(c.argv[:2], c.expected_status) for c in commands] == [
        (["pkpd", "simulate"], 2),
        (["pkpd", "models"], 0),
    ]
    # '#' inside quotes is not a comment
    (command,) = parse_shell('pkpd simulate m "1 mg # exits 3"\n')
    assert command.expected_status == 0


def test_unfinished_continuation_is_an_error():
    with pytest.raises(DocExampleError, match="continuation"):
        parse_shell("pkpd simulate m r \\\n")


def test_quoted_output_follows_an_elision_marker():
    source = textwrap.dedent(
        """\
        # Compare two regimens:
        pkpd compare m a b --patients 1000
        # ...
        # cp: Cmax median 3.872 (5-95%: 3.311-4.405)
        # PD x: Simons P, ... USER-SUPPLIED
        pkpd report out.nc
        # Not output: a comment before the next command
        pkpd models
        """
    )
    compare, report, models = parse_shell(source)
    assert compare.quoted == [
        "cp: Cmax median 3.872 (5-95%: 3.311-4.405)",
        "PD x: Simons P, ... USER-SUPPLIED",
    ]
    assert report.quoted == [] and models.quoted == []
    printed = (
        "model: m\n   cp: Cmax median 3.872 (5-95%: 3.311-4.405)\n"
        "PD x: Simons P, O. (2022); USER-SUPPLIED\n"
    )
    check_quoted_output(compare, printed)
    with pytest.raises(DocExampleError, match=r"3\.872"):
        check_quoted_output(compare, printed.replace("3.872", "3.87"))
    # the numbers are literal, not patterns: '.' matches only a dot
    with pytest.raises(DocExampleError):
        check_quoted_output(compare, printed.replace("3.872", "3x872"))


def test_patients_are_lowered_and_design_grids_shrunk():
    argv = ["pkpd", "simulate", "m", "r", "--patients", "100_000", "--seed", "1"]
    assert lower_patients(argv) == [*argv[:5], str(PATIENT_CAP), "--seed", "1"]
    assert lower_patients(["pkpd", "simulate", "--patients=20"]) == [
        "pkpd", "simulate", "--patients=20",
    ]  # fmt: skip
    assert lower_patients(["pkpd", "x", "--patients=5000"])[-1] == f"--patients={PATIENT_CAP}"
    bolus = ",".join(str(v) for v in range(10))
    argv = ["pkpd", "design", "m", "--bolus", bolus, "--rate", "1,2", "--target", "a,b,c,d"]
    shrunk = shrink_design(argv)
    values = shrunk[4].split(",")
    assert len(values) == DESIGN_CAP and values[0] == "0" and values[-1] == "9"
    assert shrunk[5:] == argv[5:]  # short lists and other options unchanged
    # only `pkpd design` grids are shrunk
    assert shrink_design(["pkpd", "simulate", "--bolus", bolus]) == [
        "pkpd", "simulate", "--bolus", bolus,
    ]  # fmt: skip
    assert prepare(["pkpd", "design", "--patients", "10000", "--rate", bolus])[3] == str(
        PATIENT_CAP
    )
    with pytest.raises(DocExampleError, match="whole number"):
        lower_patients(["pkpd", "x", "--patients", "many"])


def test_a_failing_command_fails_and_names_it(tmp_path):
    with pytest.raises(DocExampleError, match=r"line 3: .*nosuchmodel.*exited with status 2"):
        run_shell_block("pkpd models\n\npkpd models show nosuchmodel\n", tmp_path)
    # announced: passes, and the first command's output comes back
    outputs = run_shell_block("pkpd models\npkpd models show nosuchmodel  # exits 2\n", tmp_path)
    assert "fanta2015_otto2021" in outputs[0]


def test_a_repository_path_fails_outside_the_repository(tmp_path):
    block = 'pkpd simulate models/fanta2015_otto2021.toml "1 mg bolus at 0 h" --weight 70\n'
    with pytest.raises(DocExampleError, match="exited with status 2"):
        run_shell_block(block, tmp_path)
    run_shell_block(block.replace("models/fanta2015_otto2021.toml", "fanta2015_otto2021"), tmp_path)


def test_other_commands_are_refused(tmp_path):
    with pytest.raises(DocExampleError, match=r"not a pkpd command.*skip: next"):
        run_shell_block("make test\n", tmp_path)


def test_toml_blocks_are_parsed_and_a_regimen_is_loaded():
    assert check_toml_block('a = 1\n[b]\nc = "x"\n') == {"a": 1, "b": {"c": "x"}}
    with pytest.raises(DocExampleError, match="not valid TOML"):
        check_toml_block('source = "..."; tag = "paper"\n')
    regimen = '[regimen]\nname = "x"\n[[bolus]]\namount = "0.2 mg/kg"\nat = "0 h"\n'
    check_toml_block(regimen)
    from pkpd.errors import RegimenError

    with pytest.raises(RegimenError, match="no dose uses it"):
        check_toml_block(regimen + '[anchors.end_of_surgery]\ndefault = "4 h"\n')


def _pytest(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_sybil_runs_blocks_in_order_skips_visibly_and_fails(tmp_path):
    """A Markdown file run through the project's conftest.py, as `make test` runs the READMEs."""
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (tmp_path / "doc.md").write_text(
        textwrap.dedent(
            """\
            # A document

            ```python
            import os
            x = 41
            here = os.getcwd()
            ```

            ```python
            assert x + 1 == 42, "a namespace per document"
            assert os.path.exists(here) and not os.path.exists("doc.md"), "not run in the repo"
            ```

            <!-- skip: next "needs hours" -->
            ```sh
            make everything
            ```

            ```toml
            a = 1
            ```

            ```sh
            pkpd models show nosuchmodel
            ```
            """
        )
    )
    proc = _pytest("-rfs", "doc.md", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"1 failed, 4 passed, 1 skipped", proc.stdout), proc.stdout
    assert "FAILED doc.md::line:23" in proc.stdout
    assert "needs hours" in proc.stdout
    assert "line 24: pkpd models show nosuchmodel" in proc.stdout


def _blocks(text: str) -> list[tuple[int, str]]:
    """(line, language) of each fenced block opening in a Markdown text."""
    blocks, opening = [], None
    for match in FENCE.finditer(text):
        if opening is None:
            opening = match
            blocks.append((text.count("\n", 0, match.start()) + 1, match.group(2)))
        elif not match.group(2) and len(match.group(1)) >= len(opening.group(1)):
            opening = None
    return blocks


def test_every_block_of_the_documentation_is_collected():
    """`make test`'s configuration (pyproject testpaths, conftest.py) collects each fenced
    block of the documentation, and each skip marker, as one item: no block is in a language
    the runner does not know, and a file lost from testpaths (or a conftest that stops
    collecting) fails here."""
    known = {"python", "toml", "text", *SHELL_LANGUAGES}
    expected = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for line, language in _blocks(text):
            assert language in known, f"{doc}:{line}: a ```{language} block is never run"
            if language != "text":  # diagrams
                expected.append(f"{doc}::line:{line},column:1")
        for match in re.finditer(r"^<!-- skip: next ", text, re.MULTILINE):
            expected.append(f"{doc}::line:{text.count(chr(10), 0, match.start()) + 1},column:1")
    assert len(expected) >= 20
    proc = _pytest("--collect-only", "-q", "-p", "no:xdist", cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = [line for line in proc.stdout.splitlines() if ".md::line:" in line]
    assert sorted(collected) == sorted(expected)
