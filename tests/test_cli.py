"""The main CLI: every subcommand is reachable through the lazy group and documents itself."""

from __future__ import annotations

import pytest

from conftest import run_cli
from modelmix.cli import _LAZY, app


@pytest.mark.parametrize("name", ["merge", "check", *_LAZY])
def test_every_subcommand_has_help(name):
    code, out, err = run_cli(name, "--help")
    assert code == 0, err
    assert "Usage:" in out and name in out


def test_top_level_help_lists_commands():
    code, out, _ = run_cli("--help")
    assert code == 0
    for name in ["merge", "check", *_LAZY]:
        assert name in out
    assert set(app.list_commands(None)) >= {"merge", "check", *_LAZY}  # type: ignore[arg-type]


def test_zoo_group_has_build_and_report():
    code, out, _ = run_cli("zoo", "--help")
    assert code == 0 and "build" in out and "report" in out


def test_unknown_command_suggests():
    code, _, err = run_cli("mrege")
    assert code != 0 and "merge" in err
