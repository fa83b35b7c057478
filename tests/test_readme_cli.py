"""README.md and `trtq --help` agree: each subcommand's options, as its help prints them, are the options
README's "Command reference" section for it names, both ways; every subcommand has a section there; the
`--passes` help lists every registered pass. (tests/test_readme_commands.py runs the README's command lines.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trtq.cli import main
from trtq.exporter.passes.registry import registered_passes

README = Path(__file__).resolve().parents[1] / "README.md"
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-z])\b")


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _subcommands(top_help: str) -> list[str]:
    listed = re.search(r"\{([a-z,-]+)\}", top_help)
    assert listed, top_help
    return listed.group(1).split(",")


def _help_options(text: str) -> set[str]:
    """The options the help's usage and option list declare (not those its prose mentions)."""
    declared = set()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):  # an option line: "-o OUTPUT, --output OUTPUT  help text"
            head = re.split(r"\s{2,}", stripped, maxsplit=1)[0]
            declared |= set(OPTION.findall(head))
    return declared - {"-h", "--help"}


def _reference() -> dict[str, str]:
    """README's "Command reference": subcommand -> the text of its section."""
    text = README.read_text(encoding="utf-8")
    ref = text.split("\n## Command reference\n", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### `trtq ([a-z-]+)`.*$", ref, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_subcommand_has_a_reference_section(capsys):
    top = _help(capsys)
    assert set(_subcommands(top)) == set(_reference())
    assert _help_options(top) == {"-v", "--verbose"}
    intro = README.read_text(encoding="utf-8").split("\n## Command reference\n", 1)[1].split("\n### ", 1)[0]
    assert "--verbose" in intro


@pytest.mark.parametrize("command", sorted(_reference()))
def test_help_and_readme_name_the_same_options(command, capsys):
    in_help = _help_options(_help(capsys, command))
    in_readme = {o for o in OPTION.findall(_reference()[command]) if o != "-v"}
    # table rows: the first cell holds the options this command takes; prose may point to other commands'
    rows = [line.split(" | ", 1)[0] for line in _reference()[command].splitlines() if line.startswith("| `")]
    in_rows = {o for row in rows for o in OPTION.findall(row)}
    assert in_help - in_readme == set(), f"trtq {command} --help options missing from README's section"
    assert in_rows - in_help == set(), f"README's section for trtq {command} names options its help lacks"
    assert in_help == in_rows, f"README's option table for trtq {command} differs from its help"


def test_passes_help_lists_every_registered_pass(capsys):
    text = " ".join(_help(capsys, "quantize").split())
    missing = [name for name in registered_passes() if not re.search(rf"\b{name}( \(or \w+\))?: \w", text)]
    assert not missing, missing
