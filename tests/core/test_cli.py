"""The ``pc-prior`` command table: every command is listed once, and each one listed exists."""

import argparse

import pytest

from pc_prior import __version__
from pc_prior.cli import COMMANDS, build_parser, main


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_command_table_is_exactly_what_the_parser_offers():
    subs = _subcommands(build_parser())
    assert list(subs) == list(COMMANDS)  # same commands, in the table's order


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_listed_command_parses_its_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_leaf_commands_set_their_function():
    args = build_parser().parse_args(
        ["lossless", "compress", "--model", "m.pt", "in.npy", "out.pcl"]
    )
    assert callable(args.func)


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_version_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"pc-prior {__version__}"
