"""The ``pc-prior`` command line: its table, grammar, light ``--help``, errors and old names."""

import argparse
import json
import subprocess
import sys

import pytest

from pc_prior import __version__
from pc_prior.cli import COMMANDS, DEPRECATED, Lazy, build_parser, main
from pc_prior.errors import InputError

#: What ``--help`` must not import: it runs in well under a second only without these.
HEAVY = (
    "torch",
    "numpy",
    "compressai",
    "pytorch_lightning",
    "lightning",
    "lightning_fabric",
    "torchvision",
    "jsonargparse",
    "matplotlib",
    "pc_prior.integrations",
    "pc_prior.train",
)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subs[0] if subs else None


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = _subparsers(parser)
    return dict(action.choices) if action else {}


def _paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command path below ``parser`` (groups and leaves), with its parser."""
    out = []
    for name, p in _subcommands(parser).items():
        out.append(((*prefix, name), p))
        out += _paths(p, (*prefix, name))
    return out


PATHS = [path for path, _ in _paths(build_parser())]
LEAVES = [path for path, p in _paths(build_parser()) if _subparsers(p) is None]


def test_command_table_is_exactly_what_the_parser_offers():
    subs = _subcommands(build_parser())
    assert list(subs) == list(COMMANDS)  # same commands, in the table's order
    assert set(DEPRECATED) <= set(COMMANDS)


def test_grammar_is_noun_then_verb():
    new = {" ".join(p) for p in LEAVES if p[0] not in DEPRECATED}
    assert new == {
        "prior fit",
        "prior adapt",
        "codec train",
        "codec finetune",
        "lightning fit",
        "lossless fit",
        "lossless bench",
        "lossless compress",
        "lossless decompress",
        "lossless report",
        "eval",
        "compare",
        "demo",
        "compressai eval-model",
        "compressai update-model",
    }
    assert set(DEPRECATED.values()) <= new


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_every_command_prints_help_under_its_own_name(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pc-prior {' '.join(path)} "), out[:200]


def test_help_imports_neither_torch_nor_compressai_nor_lightning():
    """Every --help, in a fresh interpreter: none of HEAVY may be imported."""
    code = (
        "import contextlib, io, json, sys\n"
        "from pc_prior.cli import main\n"
        f"for path in {[list(p) for p in PATHS]!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main([*path, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + '.' for h in heavy)))))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []


def test_old_commands_are_hidden_work_and_warn(capsys):
    parser = build_parser()
    listing = parser.format_help()
    for old in DEPRECATED:
        assert f"\n    {old} " not in listing and f"\n    {old}\n" not in listing
    for new in ("prior", "codec", "lossless", "eval", "compare", "demo", "lightning"):
        assert f"\n    {new}" in listing
    for old, new in DEPRECATED.items():
        with pytest.raises(SystemExit):
            main([old, "--help"])
        captured = capsys.readouterr()
        assert f"Deprecated: 'pc-prior {old}' is 'pc-prior {new}'" in captured.out
        assert captured.err == (
            f"pc-prior: warning: 'pc-prior {old}' is deprecated and goes in the next release; "
            f"use 'pc-prior {new}'\n"
        )


def test_one_name_per_thing_and_old_names_hidden():
    """MODEL, --codec, --data, -o/--output, --limit; the old spellings are not in any --help."""
    parser = build_parser()
    old_names = (
        "--images",
        "--out ",
        "--max-images",
        "--max-train-images",
        "--model ",
        "--init",
        "--json",
    )
    for path, p in _paths(parser):
        text = p.format_help()
        for old in old_names:
            assert old not in text, (path, old)
        options = {s for a in p._actions for s in a.option_strings if a.help != argparse.SUPPRESS}
        assert not options & {"--out", "--images", "--model", "--max-images", "--json"}, path
        if "--output" in options:
            assert "-o" in options, path
    args = parser.parse_args(["prior", "fit", "c.pt", "--data", "d", "-o", "o", "--limit", "3"])
    assert (args.model, args.data, args.output, args.limit, args.adapt) == (
        "c.pt",
        "d",
        "o",
        3,
        False,
    )
    args = parser.parse_args(["lossless", "compress", "in.npy", "--codec", "m.pt", "-o", "x"])
    assert (args.input, args.codec, args.output) == ("in.npy", "m.pt", "x")
    args = parser.parse_args(["demo", "-o", "d", "--train-data", "t", "--train-limit", "2"])
    assert (args.output, args.train_data, args.train_limit) == ("d", "t", 2)


def test_required_operands_show_as_required_and_are_checked(capsys):
    fit = _subcommands(_subcommands(build_parser())["prior"])["fit"]
    text = fit.format_usage()
    assert "--data DATA -o OUTPUT" in text and text.rstrip().endswith("MODEL")
    assert "[MODEL]" not in text and "[--data" not in text
    with pytest.raises(SystemExit) as e:
        main(["prior", "fit", "--data", "d", "-o", "o"])
    assert e.value.code == 2
    assert "pc-prior prior fit: error: the following arguments are required: MODEL" in (
        capsys.readouterr().err
    )


def test_old_options_still_work_with_one_warning_each(capsys):
    argv = ["prior", "fit", "--codec", "c.pt", "--images", "d", "--out", "o", "--max-images", "2"]
    args = build_parser().parse_args(argv)
    assert (args.model, args.data, args.output, args.limit, args.adapt) == (
        "c.pt",
        "d",
        "o",
        2,
        False,
    )
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "pc-prior: warning: --codec is deprecated and goes in the next release; use the "
        "positional MODEL",
        "pc-prior: warning: --images is deprecated and goes in the next release; use --data",
        "pc-prior: warning: --out is deprecated and goes in the next release; use --output",
        "pc-prior: warning: --max-images is deprecated and goes in the next release; use --limit",
    ]
    args = build_parser().parse_args(["prior", "fit", "--init", "c.pt", "--data", "d", "-o", "o"])
    assert (args.model, args.adapt) == ("c.pt", True)  # prior fit --init is prior adapt
    assert "use 'pc-prior prior adapt MODEL'" in capsys.readouterr().err
    # an old and a new spelling of one argument together: refused, not silently one of them
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["prior", "fit", "c.pt", "--codec", "x.pt", "--data", "d", "-o", "o"]
        )
    assert "give MODEL once" in capsys.readouterr().err


def test_every_leaf_command_has_a_function_that_resolves():
    for path, p in _paths(build_parser()):
        if _subparsers(p) is not None:
            continue
        func = p.get_default("func")
        assert callable(func), path
        if isinstance(func, Lazy):
            assert callable(func.resolve()), path  # imports the heavy module: fine here
        assert p.get_default("command_name") == " ".join(path)


def test_input_errors_are_one_line(tmp_path, capsys):
    # a converted raise: --limit below 1 is InputError, checked before any image or model
    assert main(["eval", "m.pt", "--data", str(tmp_path), "--limit", "0"]) == 1
    err = capsys.readouterr().err
    assert err == "pc-prior eval: error: --limit must be at least 1, got 0\n"
    # FileNotFoundError: one line too
    assert main(["lossless", "report", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pc-prior lossless report: error: ") and "missing.json" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch, capsys):
    import pc_prior.eval.lossless_report as report

    (tmp_path / "r.json").write_text("{}")

    def bug(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(report, "lossless_table", bug)
    with pytest.raises(ValueError, match="a bug, not bad input"):
        main(["lossless", "report", str(tmp_path / "r.json")])

    def bad_input(*args, **kwargs):
        raise InputError("a bad file: give another")

    monkeypatch.setattr(report, "lossless_table", bad_input)
    assert main(["lossless", "report", str(tmp_path / "r.json")]) == 1
    assert capsys.readouterr().err == "pc-prior lossless report: error: a bad file: give another\n"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_version_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"pc-prior {__version__}"
