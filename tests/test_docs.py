"""The docs keep up with the code: every setting and every CLI command is in docs/cli.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from firstvalue.cli.main import cli
from firstvalue.settings import SETTINGS

CLI_DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def command_names(group: click.Group, prefix: str = "firstvalue") -> Iterator[str]:
    """`firstvalue NAME` for every command and group, `firstvalue GROUP NAME` for those of
    subgroups (a group such as `actions` can be a command of its own too)."""
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        yield f"{prefix} {name}"
        if isinstance(command, click.Group):
            yield from command_names(command, f"{prefix} {name}")


@pytest.fixture(scope="module")
def cli_doc() -> str:
    return CLI_DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.name)
def test_every_setting_is_documented_with_its_environment_variable(setting, cli_doc):
    assert setting.env in cli_doc, (
        f"setting {setting.name!r} ({setting.env}) is missing from docs/cli.md; add it to the "
        "Settings table with its default and help")


@pytest.mark.parametrize("command", list(command_names(cli)))
def test_every_cli_command_is_documented(command, cli_doc):
    assert command in cli_doc, (
        f"`{command}` is not mentioned in docs/cli.md; give it a section under Commands")


def test_the_command_walk_finds_subcommands():
    names = list(command_names(cli))
    assert "firstvalue playbook" in names
    assert "firstvalue playbook check" in names
    assert "firstvalue tick" in names


def test_the_docs_show_the_default_playbooks_current_version():
    # Examples of output name the default playbook's version, whose hash changes with its
    # text: they must be brought up to date with it.
    import re

    from firstvalue.engine.compiled import compile_playbook
    from firstvalue.playbook.loader import load_playbook

    current = compile_playbook(load_playbook()).version
    root = CLI_DOC.parent.parent
    shown = {(path.name, version) for path in [root / "README.md", *root.glob("docs/*.md")]
             for version in re.findall(r"default@[0-9.]+\+[0-9a-f]{12}", path.read_text())}
    assert shown, "the docs show the version somewhere"
    assert {version for _, version in shown} == {current}, sorted(shown)


def test_the_help_listing_in_the_docs_is_the_clis_own():
    # docs/cli.md shows `firstvalue --help`: its command lines must be the real ones.
    from click.testing import CliRunner

    # As `firstvalue --help` prints it: click caps the help at 80 columns, two kept free.
    shown = CliRunner().invoke(cli, ["--help"], terminal_width=78).output
    listing = shown[shown.index("Commands:"):].rstrip()
    assert listing in CLI_DOC.read_text(encoding="utf-8"), (
        "the Commands listing of `firstvalue --help` in docs/cli.md is out of date; paste the "
        "current one:\n" + listing)
