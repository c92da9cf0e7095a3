"""Every tool in tools/ runs through the one error path, and every declared flag refuses bad values.

The walk enumerates ``tools/*.py``: a new tool that does not use ``run_main`` and
``ToolParser``, or declares a number flag with a bare ``type=int``/``float``, fails here. Each
declared flag is then given the values its declaration refuses (a wrong type, NaN, +-inf, one
step outside each end of its range; a value outside its ``choices``) and must end with exit
status 2 and one ``error:`` line naming it, before the tool does any work.
"""

from __future__ import annotations

import pytest

from diffvision.engine.cli import FlagType, ToolParser, run_main
from diffvision.errors import CLIError
from tests.tool_helpers import REPO, load_tool

pytestmark = pytest.mark.usefixtures("tool_env")

TOOLS = sorted(path.stem for path in (REPO / "tools").glob("*.py"))


def _bad_argvs(parser: ToolParser) -> list[tuple[str, list[str]]]:
    """(flag, argv) for every refused value of every declared option of ``parser``."""
    cases = []
    positionals = [a for a in parser._actions if not a.option_strings]
    if positionals and positionals[0].choices is not None:  # e.g. convert_weights' variant
        cases.append((positionals[0].dest, ["not-a-choice"]))
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.dest == "help":
            continue
        flag = action.option_strings[0]
        count = action.nargs if isinstance(action.nargs, int) else 1
        if isinstance(action.type, FlagType):
            values = action.type.bad_values()
        elif action.choices is not None:
            values = ["not-a-choice"]
        else:
            continue  # a name or a path: checked where it is read, after parsing
        for value in values:
            # "-inf" would read as an option: the flag=value form keeps it the flag's value
            argv = [f"{flag}={value}"] if value.startswith("-") else [flag, *[value] * count]
            cases.append((flag, argv))
    return cases


def test_the_walk_sees_every_tool():
    assert {"train_net", "demo", "export", "sample", "benchmark_onnx"} <= set(TOOLS)
    assert len(TOOLS) >= 11


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_runs_through_run_main_and_declares_its_numbers(name):
    source = (REPO / "tools" / f"{name}.py").read_text()
    entry = source.split('if __name__ == "__main__":')[-1]
    if name == "train_net":  # cli() validates before spawning, then calls run_main itself
        assert "sys.exit(cli())" in entry and "return run_main(" in source
    else:
        assert "sys.exit(run_main(main))" in entry, f"tools/{name}.py bypasses run_main"
    module = load_tool(name)
    parser = module.argument_parser()
    assert isinstance(parser, ToolParser), f"tools/{name}.py: argument_parser is not a ToolParser"
    bare = [
        a.option_strings[0]
        for a in parser._actions
        if a.option_strings and a.type in (int, float) and a.choices is None
    ]
    assert not bare, f"tools/{name}.py: {bare} take numbers without a declared range"


@pytest.mark.parametrize("name", TOOLS)
def test_every_declared_flag_refuses_bad_values_in_one_line(name, capsys):
    module = load_tool(name)
    entry = module.cli if name == "train_net" else module.main
    cases = _bad_argvs(module.argument_parser())
    assert cases, f"tools/{name}.py declares no flag to check"
    for flag, argv in cases:
        status = run_main(entry, argv) if name != "train_net" else entry(argv)
        err = capsys.readouterr().err
        assert status == 2, (argv, err)
        assert "Traceback" not in err, (argv, err)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and flag in lines[0], (argv, err)


def test_list_flags_stop_at_the_first_config_key():
    """benchmark_onnx's own docstring example: ``--steps 1 4`` followed by overrides."""
    parser = load_tool("benchmark_onnx").argument_parser()
    args = parser.parse_args(
        ["--config", "c.yaml", "--boxes", "100", "300", "--steps", "1,4",
         "MODEL.WEIGHTS", "w.pth", "SEED", "3"]
    )  # fmt: skip
    assert args.boxes == [100, 300] and args.steps == [1, 4]
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "SEED", "3"]


def test_a_flag_after_the_overrides_says_flags_go_first(capsys):
    status = load_tool("train_net").cli(["--config", "c.yaml", "SOLVER.MAX_ITER", "3", "--resume"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("error:") == 1
    assert "--resume comes after the config overrides" in err and "flags go first" in err


def test_unknown_tokens_before_the_overrides_stay_overrides():
    """A lower-case key is not dropped: it reaches the config, which names it as unknown."""
    parser = load_tool("export").argument_parser()
    args = parser.parse_args(["--config", "c.yaml", "model.weights", "w.pth"])
    assert args.opts == ["model.weights", "w.pth"]


def test_a_flag_value_that_looks_like_a_key_is_the_flags():
    parser = ToolParser()
    parser.add_argument("--dataset")
    parser.add_argument("opts", nargs="*")
    args = parser.parse_args(["--dataset", "SEED", "SOLVER.BASE_LR", "0.1"])
    assert args.dataset == "SEED" and args.opts == ["SOLVER.BASE_LR", "0.1"]


def test_argparse_errors_are_cli_errors():
    parser = ToolParser()
    parser.add_argument("--n", required=True)
    with pytest.raises(CLIError, match="--n"):
        parser.parse_args([])
    with pytest.raises(CLIError, match="unrecognized arguments: --m"):
        parser.parse_args(["--n", "1", "--m"])
