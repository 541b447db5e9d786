"""The command lines as a user meets them (issue 11, items 2 and 7).

* Every command README.md and experiments/README.md show names a module that
  answers ``--help``, with the flags the README uses; README's ``experiments.main``
  commands parse to configs that pass the config check; the README says how to
  activate the environment before its first ``python -m`` command.
* A user's mistake in any entry point is one ``error: ...`` line with exit
  status 2: no traceback, and no absl line about a missing TPU.
* Every entry point reads absl flags; all but ``experiments.main`` through
  ``cli.parse``, whose ``--help`` exits 0 (``absl.app``'s exits 1).

Each test starts ONE Python process that runs its commands in turn through
``runpy`` (as ``python -m`` would), so JAX starts once per test.
"""

import ast
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from experiments import cli, factory
from experiments.configs import default

ROOT = Path(__file__).resolve().parents[1]
READMES = (
    "README.md",
    "experiments/README.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
)
ACTIVATE = ". .venv/bin/activate"

# Runs each [module, args] as `python -m module args` would, in one process, and
# prints [{"code", "out", "err"}] as JSON. Output is caught at the file
# descriptors, where absl's log handler and tqdm write too.
DRIVER = r"""
import json, os, runpy, sys, tempfile
results = []
for module, args in json.loads(sys.argv[1]):
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
        if isinstance(code, str):  # what the interpreter does with sys.exit("message")
            print(code, file=sys.stderr)
            code = 1
        code = code or 0
    except BaseException:
        import traceback
        traceback.print_exc()
        code = "uncaught exception"
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    out.seek(0)
    err.seek(0)
    results.append({"code": code, "out": out.read().decode(), "err": err.read().decode()})
print(json.dumps(results))
"""


def run_commands(commands: list[tuple[str, list[str]]], cwd: Path = ROOT) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(commands)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fenced_blocks(text: str) -> tuple[list[tuple[str, str]], str]:
    """([(language, body)] of the ``` blocks, the text outside them)."""
    blocks, outside, language, body = [], [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(body)))
                language = None
        elif language is None:
            outside.append(line)
        else:
            body.append(line)
    return blocks, "\n".join(outside)


def readme_commands() -> list[tuple[str, str]]:
    """(readme, command) for every `python -m ...` shown, in code blocks and inline
    (a placeholder such as `python -m experiments.main ...` excepted)."""
    found = []
    for name in READMES:
        blocks, prose = _fenced_blocks((ROOT / name).read_text())
        candidates = [
            line.split("#")[0]
            for language, body in blocks
            if language in ("sh", "bash", "")
            for line in body.replace("\\\n", " ").splitlines()
        ]
        candidates += re.findall(r"`([^`]+)`", prose)
        for candidate in candidates:
            command = " ".join(candidate.split())
            if command.startswith(("python -m ", ".venv/bin/python -m ")):
                if "..." not in command.split():
                    found.append((name, command))
    return found


def _module_and_args(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    return words[2], words[3:]


def test_readme_says_how_to_activate_the_environment_before_its_first_command():
    text = (ROOT / "README.md").read_text()
    activation = re.search(r"```sh\n" + re.escape(ACTIVATE), text)
    assert activation, f"README.md shows no `{ACTIVATE}` line in a code block"
    first = min((text.index(c) for _, c in readme_commands() if c in text), default=len(text))
    assert activation.start() < first, "the activation line comes after a python command"
    for name in {name for name, _ in readme_commands()} - {"README.md"}:
        assert ACTIVATE in (ROOT / name).read_text(), f"{name} does not say how to activate"
    make_targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M))
    for target in re.findall(r"`make ([a-z]+)`", text):
        assert target in make_targets, f"`make {target}` is not a Makefile target"


def test_every_readme_command_answers_help_with_the_flags_it_uses():
    commands = readme_commands()
    assert len(commands) >= 10  # the parser found the commands (README has more)
    flags_used: dict[str, set[str]] = {}
    for _, command in commands:
        module, args = _module_and_args(command)
        assert module.startswith("experiments."), command
        names = {a.split("=")[0] for a in args if a.startswith("--")}
        flags_used.setdefault(module, set()).update(
            n for n in names if not n.startswith("--config.")
        )
        if module == "experiments.main":
            _check_main_command(args)
    modules = sorted(flags_used, key=lambda m: m != "experiments.main")
    results = run_commands([(m, ["--help"]) for m in modules])
    for module, result in zip(modules, results, strict=True):
        text = result["out"] + result["err"]
        assert "Traceback" not in text, f"{module} --help:\n{text}"
        assert result["code"] == 0, f"{module} --help: exit {result['code']}\n{text}"
        assert "usage" in text.lower() or "flags:" in text, f"{module} --help printed:\n{text}"
        for name in flags_used[module]:
            assert name in text, f"README runs {module} with {name}; its --help lacks it"


def _check_main_command(args: list[str]) -> None:
    """Build the config README's flags ask for, and check it as the real command does."""
    options = dict(
        a.removeprefix("--").split("=", 1)
        for a in " ".join(args)
        .replace("--config ", "--config=")
        .replace("--workdir ", "--workdir=")
        .split()
    )
    assert options.get("workdir"), args
    config = factory.load_config(*options.pop("config").split(":"))
    for key, text in options.items():
        if key.startswith("config."):
            *parents, leaf = key.removeprefix("config.").split(".")
            node = config
            for part in parents:
                node = node[part]
            old = node[leaf]
            node[leaf] = ast.literal_eval(text) if not isinstance(old, str) else text
    factory.check_config(config)


def _write_run_with_a_garbage_checkpoint(workdir: Path) -> None:
    workdir.mkdir()
    (workdir / "config.json").write_text(default.get_config("smoke").to_json())
    (workdir / "checkpoint.msgpack").write_bytes(b"\x85\xa5epoch")  # a map cut short


@pytest.mark.slow
def test_user_errors_are_one_line_with_status_2_in_every_entry_point(tmp_path):
    run = tmp_path / "run"
    _write_run_with_a_garbage_checkpoint(run)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a workdir")
    smoke = "experiments/configs/default.py:smoke"
    cases = [
        # first: its JAX backend starts under absl's logging, where the TPU line showed
        (
            "experiments.main",
            ["--config", smoke, f"--workdir={run}"],
            f"checkpoint {run / 'checkpoint.msgpack'} is unreadable",
        ),
        ("experiments.evaluate", ["--workdir", str(a_file)], "is a file"),
        (
            "experiments.evaluate",
            ["--workdir", str(run), "--num-samples", "0"],
            "--num-samples=0: 0 is not a positive",
        ),
        ("experiments.inference_gap", ["--workdir", str(tmp_path / "none")], "holds no run"),
        ("experiments.ablate", ["--grid", "prior", "--workdir", str(run)], "unknown grid"),
        (
            "experiments.ablate",
            ["--grid", "priors", "--workdir", str(run), "--seeds", "0"],
            "--seeds=0",
        ),
        ("experiments.exactness", ["--samples", "5"], "Unknown command line flag 'samples'"),
        (
            "experiments.evaluate",
            ["--num-samples", "50"],
            "give one of --workdir (a run) or --params",
        ),
        ("experiments.evaluate", ["--workdir", str(run), "50"], "unexpected arguments: 50"),
        ("experiments.inference_gap", ["--workdir", str(run), "--fit-steps", "x"], "fit-steps"),
        (
            "experiments.inference_gap",
            ["--workdir", str(run), "--fit-steps", "9"],
            "--fit-steps=9: 9 is not integer >= 10",
        ),
        (
            "experiments.aggregate_kl",
            ["--workdir", str(run), "--num-images", "ten"],
            "expected comma-separated integers, got 'ten'",
        ),
        ("experiments.bench", ["--rounds", "0"], "--rounds=0: 0 is not a positive integer"),
        ("experiments.speed_profile", ["bogus"], "unknown command 'bogus'"),
        ("experiments.speed_profile", [], "missing command"),
    ]
    results = run_commands([(module, args) for module, args, _ in cases])
    for (module, args, expected), result in zip(cases, results, strict=True):
        lines = result["err"].splitlines()
        shown = f"{module} {args}: exit {result['code']}, stderr:\n{result['err']}"
        assert result["code"] == 2, shown
        assert len(lines) == 1 and lines[0].startswith("error: "), shown
        assert expected in lines[0], shown
    # the refusal came before anything was written
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.msgpack", "config.json"]


PROG = f"python -m {__spec__.name}"  # test_cli, or tests.test_cli, as pytest imports it


def _define(values: flags.FlagValues) -> None:
    cli.flag(values, "workdir", None, "the run")
    cli.flag(values, "num-samples", 5000, "importance samples")
    cli.flag(values, "no-torch", False, "skip the reference")
    cli.flag(values, "torch-venv", "venv", "a hidden flag")


def test_a_flags_kind_follows_its_default_and_bounds_are_checked_and_shown(capsys):
    def define(values):
        cli.flag(values, "rate", 0.5, "a float")
        cli.flag(values, "rounds", 5, "an int", lower_bound=1)
        cli.flag(values, "quick", False, "a switch")
        cli.flag(values, "name", None, "a string")

    args = cli.parse(["--rate=2", "--rounds=3", "--quick", "--name=7"], define, "doc")
    assert vars(args) == {"rate": 2.0, "rounds": 3, "quick": True, "name": "7"}
    assert isinstance(args.rate, float) and isinstance(args.name, str)
    with pytest.raises(cli.UserError, match=re.escape("flag --rounds=0: 0 is not a positive")):
        cli.parse(["--rounds=0"], define, "doc")
    with pytest.raises(SystemExit):
        cli.parse(["--help"], define, "doc")
    assert "--rounds (a positive integer, default 5)" in capsys.readouterr().out


def test_parse_keeps_hyphenated_names_and_defines_the_flags_afresh_each_call():
    for _ in range(2):  # a fresh FlagValues each call: no duplicate-flag error
        args = cli.parse(
            ["--workdir", "w", "--num-samples", "7", "--no-torch"],
            _define,
            "doc",
            required=["workdir"],
        )
        want = {"workdir": "w", "num_samples": 7, "no_torch": True, "torch_venv": "venv"}
        assert vars(args) == want
    args = cli.parse(["--workdir=w", "--", "--x"], _define, "doc", positional=["name"])
    assert vars(args) == {
        "workdir": "w",
        "num_samples": 5000,
        "no_torch": False,
        "torch_venv": "venv",
        "name": "--x",
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "missing --workdir"),
        (["--workdir=w", "stray"], "unexpected arguments: stray"),
        (["--workdir=w", "--num-samples=many"], "flag --num-samples=many: invalid literal"),
        (["--workdir=w", "--num-sample=5"], "Unknown command line flag 'num-sample'"),
        (["--workdir=w", "--num-samples"], "Missing value for flag --num-samples"),
    ],
)
def test_parse_turns_every_mistake_into_a_user_error(argv, message):
    with pytest.raises(cli.UserError, match=re.escape(message)) as error:
        cli.parse(argv, _define, "doc", required=["workdir"])
    assert str(error.value).endswith(f"(see {PROG} --help)")


@pytest.mark.parametrize("asks", [["--help"], ["-h"], ["--num-samples=x", "-h"]])
def test_parse_answers_help_with_exit_0_and_hides_hidden_flags(asks, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse(asks, _define, "The doc.", required=["workdir"], hidden=["torch-venv"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {PROG} [flags]\n") and "The doc." in out
    assert "--workdir (required)" in out and "--num-samples (an integer, default 5000)" in out
    assert "--no-torch" in out and "torch-venv" not in out
