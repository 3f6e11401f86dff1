"""Run the code blocks of the Markdown documentation as tests (Sybil, wired in conftest.py).

A reader pastes the examples of a README into one Python session or one shell, in order,
from wherever they are; the tests do the same:

* ``python`` blocks run in order in one namespace per document (Sybil's evaluator);
* ``sh`` / ``bash`` / ``console`` blocks: every ``pkpd ...`` command runs as a subprocess
  (this interpreter, ``python -m pkpd.cli``, with the imported ``pkpd`` first on
  ``PYTHONPATH``, so the tested code is what runs) and must exit 0, or the status its
  comment announces (``# exits 2``). Lines continued with ``\\`` are joined, comments are
  dropped, except a quote of a command's output (``# ...`` right after it, then one
  ``# line`` per printed line): those lines must be printed. Any other command is an error:
  a block that must not run carries a visible ``<!-- skip: next "reason" -->`` (Sybil's
  skip directive) instead;
* ``toml`` blocks must be valid TOML; a complete regimen file (a ``[regimen]`` table) is
  also loaded by the regimen reader and resolved for a 70-kg patient.

Both kinds run with a temporary directory outside the repository as the current directory,
one per document, so an example that only works from the repository root fails. To keep
the suite fast, ``--patients N`` becomes ``min(N, PATIENT_CAP)`` and each ``pkpd design``
variable keeps at most ``DESIGN_CAP`` of its values (first, middle, last), except in a
command whose output is quoted: that one runs as printed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PATIENT_CAP = 300
DESIGN_CAP = 3
DESIGN_OPTIONS = ("--bolus", "--rate", "--duration")
COMMAND_TIMEOUT_S = 900
SHELL_LANGUAGES = ("sh", "bash", "console")
CWD_KEY = "__doc_cwd__"

_EXIT_COMMENT = re.compile(r"\bexits?\s+(?:with\s+)?(?:status\s+)?(\d+)\b")


class DocExampleError(AssertionError):
    """A documentation example did not run as printed."""


@dataclass
class Command:
    line: int  # 0-based line of the block where the command starts
    argv: list[str]
    expected_status: int = 0
    quoted: list[str] = field(default_factory=list)  # its quoted output lines


def parse_shell(source: str) -> list[Command]:
    """The commands of a shell block: continuations joined, comments and blank lines dropped.

    A trailing comment such as ``# exits 2`` sets the expected exit status (default 0).
    A ``# ...`` comment line right after a command starts a quote of its output: the comment
    lines that follow, up to a blank line or the next command, are lines it prints (``...``
    inside one stands for any text).
    """
    commands: list[Command] = []
    pending: list[str] = []
    start = 0
    quoting = after_command = False
    for number, raw in enumerate(source.splitlines()):
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending.append(raw.rstrip()[:-1])
            continue
        pending.append(raw)
        text = " ".join(part.strip() for part in pending)
        pending = []
        if console_prompt := re.match(r"^\$\s+", text):
            text = text[console_prompt.end() :]
        if text == "# ..." and after_command:
            quoting = True
            continue
        if quoting and text.startswith("#"):
            commands[-1].quoted.append(text[1:].strip())
            continue
        quoting = after_command = False
        comment = _comment_of(text)
        try:
            argv = shlex.split(text[: len(text) - len(comment)])
        except ValueError as exc:
            raise DocExampleError(f"line {start + 1}: cannot split {text!r}: {exc}") from None
        if not argv:
            continue
        match = _EXIT_COMMENT.search(comment)
        commands.append(Command(start, argv, int(match.group(1)) if match else 0))
        after_command = True
    if pending:
        raise DocExampleError(f"line {start + 1}: the block ends inside a '\\' continuation")
    return commands


def quoted_line_pattern(quoted: str) -> re.Pattern:
    """A quoted output line as a pattern of a whole printed line: '...' is any text."""
    return re.compile(".*".join(re.escape(part.strip()) for part in quoted.split("...")))


def check_quoted_output(command: Command, output: str) -> None:
    """Every quoted line of `command` is printed (whole line, leading spaces ignored)."""
    printed = [line.strip() for line in output.splitlines()]
    for quoted in command.quoted:
        pattern = quoted_line_pattern(quoted)
        if not any(pattern.fullmatch(line) for line in printed):
            raise DocExampleError(
                f"the quoted output line {quoted!r} is not printed by "
                f"{shlex.join(command.argv)}; it printed:\n{output[-3000:]}"
            )


def _comment_of(text: str) -> str:
    """The trailing comment of a shell line: from the first '#' outside quotes that starts a
    word, or ''."""
    quote = ""
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[i:]
    return ""


def lower_patients(argv: list[str], cap: int = PATIENT_CAP) -> list[str]:
    """``--patients N`` (or ``--patients=N``) as ``min(N, cap)``; other arguments unchanged."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--patients" and i + 1 < len(out):
            out[i + 1] = str(min(_count(out[i + 1]), cap))
        elif arg.startswith("--patients="):
            out[i] = f"--patients={min(_count(arg.split('=', 1)[1]), cap)}"
    return out


def _count(text: str) -> int:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise DocExampleError(f"--patients {text!r} is not a whole number") from None


def shrink_design(argv: list[str], cap: int = DESIGN_CAP) -> list[str]:
    """Each ``pkpd design`` variable keeps at most ``cap`` values: first, middle(s), last."""
    if "design" not in argv[:2]:
        return list(argv)
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in DESIGN_OPTIONS:
            values = out[i + 1].split(",")
            if len(values) > cap:
                keep = sorted({round(k * (len(values) - 1) / (cap - 1)) for k in range(cap)})
                out[i + 1] = ",".join(values[k] for k in keep)
    return out


def prepare(argv: list[str]) -> list[str]:
    """The argument list the suite runs for a documented ``pkpd`` command."""
    return shrink_design(lower_patients(argv))


def pkpd_env() -> dict[str, str]:
    """The environment of a documented command: the imported ``pkpd`` first on PYTHONPATH."""
    import pkpd

    root = str(Path(pkpd.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_shell_block(source: str, cwd: Path, first_line: int = 1) -> list[str]:
    """Run every command of a shell block in ``cwd``; raise DocExampleError on the first failure.

    Returns the stdout of each command (for tests of the runner).
    """
    outputs = []
    env = pkpd_env()
    for command in parse_shell(source):
        where = f"line {first_line + command.line}"
        if command.argv[0] != "pkpd":
            raise DocExampleError(
                f"{where}: {shlex.join(command.argv)!r} is not a pkpd command; the suite runs "
                'only those: mark a block that must not run with <!-- skip: next "why" -->'
            )
        # A command whose output is quoted runs as printed, so the quoted numbers are checked.
        argv = list(command.argv) if command.quoted else prepare(command.argv)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pkpd.cli", *argv[1:]],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise DocExampleError(
                f"{where}: {shlex.join(argv)} ran longer than {COMMAND_TIMEOUT_S} s"
            ) from None
        if proc.returncode != command.expected_status:
            raise DocExampleError(
                f"{where}: {shlex.join(argv)} (run in {cwd}) exited with status "
                f"{proc.returncode}, expected {command.expected_status}\n"
                f"--- stdout (end) ---\n{proc.stdout[-3000:]}\n"
                f"--- stderr (end) ---\n{proc.stderr[-3000:]}"
            )
        check_quoted_output(command, proc.stdout)
        outputs.append(proc.stdout)
    return outputs


def check_toml_block(source: str) -> dict:
    """A TOML block parses; a complete regimen file also loads and resolves for 70 kg (with
    its TCI pump's rates when it has one)."""
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise DocExampleError(f"not valid TOML: {exc}") from None
    if "regimen" in data:
        from pkpd.inputs.regimen import load_regimen

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "example_regimen.toml"
            path.write_text(source, encoding="utf-8")
            regimen = load_regimen(path)
            if regimen.tci is None:
                regimen.event_table(weight=70.0)
            else:
                from pkpd.running.tci import event_arrays

                event_arrays(regimen, [70.0], None, {"weight": [70.0]})
    return data


# ---- Sybil glue (conftest.py) -----------------------------------------------------------


def document_setup(namespace: dict) -> None:
    """Before a document's first example: a fresh temporary directory as the current one."""
    folder = Path(tempfile.mkdtemp(prefix="pkpd-doc-"))
    namespace[CWD_KEY] = (folder, os.getcwd())
    os.chdir(folder)


def document_teardown(namespace: dict) -> None:
    folder, previous = namespace.pop(CWD_KEY)
    os.chdir(previous)
    shutil.rmtree(folder, ignore_errors=True)


def evaluate_shell(example) -> None:
    folder, _ = example.namespace[CWD_KEY]
    run_shell_block(str(example.parsed), folder, first_line=example.line + 1)


def evaluate_toml(example) -> None:
    check_toml_block(str(example.parsed))
