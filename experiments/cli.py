"""What every command-line entry point shares: absl flags, and a user's mistake as
one line, not a traceback.

``python -m experiments.<command>`` ends with ``cli.run(main)``. A ``UserError``
(a config out of range, a workdir that cannot hold the run, a dataset that is
not prepared, an argument out of range) prints ``error: <what and what to do>``
on one line and exits with status 2, the status of a usage error. Every other
exception is a bug and keeps its traceback.

Every command reads its flags with absl: ``experiments.main`` through
``absl.app`` (its ``--config.<key>=`` overrides come from ml_collections), the
others through :func:`parse`.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import NoReturn

from absl import flags

USAGE_ERROR = 2


class UserError(ValueError):
    """A mistake in what the command was asked to do, not a bug in the code.

    A ValueError, so callers that catch bad input as ValueError still do."""


class Interrupted(Exception):
    """Ctrl-C during a run: its message says what was kept and how to go on."""


INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C ended


def fail(message: object) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with status 2."""
    text = " ".join(str(message).split())  # one line, however the message was built
    if not text.startswith("error: "):
        text = f"error: {text}"
    print(text, file=sys.stderr, flush=True)
    raise SystemExit(USAGE_ERROR)


def parse(
    argv: Sequence[str] | None,
    define: Callable[[flags.FlagValues], object],
    description: str,
    *,
    required: Sequence[str] = (),
    positional: Sequence[str] = (),
    hidden: Sequence[str] = (),
) -> SimpleNamespace:
    """A command's flags: ``define(flag_values)`` defines them, ``argv`` (None:
    ``sys.argv[1:]``) sets them.

    The flags live on a fresh ``absl.flags.FlagValues``, not the global
    ``flags.FLAGS``, so a command's ``main(argv)`` can run many times in one
    process. Flag names keep their hyphens (``--num-samples``); the returned
    namespace spells them with underscores (``num_samples``) and holds each name
    of ``positional`` too, which must all be given and be the only arguments.

    ``--help`` or ``-h`` prints ``description`` (the module's docstring) and the
    flags, leaving out ``hidden``, then exits with status 0. A bad flag or value,
    a missing ``required`` flag or a stray argument raises :class:`UserError`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = _prog(define)
    values = flags.FlagValues()
    define(values)
    names = [name for name in values if values[name].name == name]  # not short names
    end = argv.index("--") if "--" in argv else len(argv)
    if {"--help", "-h"} & set(argv[:end]):
        print(_help(prog, description, values, names, required, positional, hidden))
        raise SystemExit(0)
    see_help = f"(see {prog} --help)"
    try:
        rest = values([prog, *argv])[1:]
    except flags.Error as error:
        raise UserError(f"{error} {see_help}") from None
    missing = [f"--{name}" for name in required if values[name].value is None]
    missing += list(positional[len(rest) :])
    if missing:
        raise UserError(f"missing {', '.join(missing)} {see_help}")
    if len(rest) > len(positional):
        raise UserError(f"unexpected arguments: {' '.join(rest[len(positional) :])} {see_help}")
    return SimpleNamespace(
        **{name.replace("-", "_"): values[name].value for name in names},
        **dict(zip(positional, rest, strict=True)),
    )


def flag(values: flags.FlagValues, name: str, default, help: str, **bounds) -> None:
    """Define ``--name`` on ``values``; its kind follows the default: a bool is
    a switch, an int an integer, a float a float, anything else (None) a string.
    ``bounds`` (``lower_bound=1``) are absl's: a value outside them is a UserError
    from :func:`parse`, and ``--help`` shows them."""
    kinds = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float}
    kinds.get(type(default), flags.DEFINE_string)(name, default, help, flag_values=values, **bounds)


def _prog(define: Callable) -> str:
    """``python -m experiments.<command>``, run as such or imported."""
    spec = getattr(sys.modules.get(define.__module__), "__spec__", None)
    return f"python -m {spec.name}" if spec else define.__module__


def _help(prog, description, values, names, required, positional, hidden) -> str:
    lines = [f"usage: {' '.join([prog, '[flags]', *positional])}", "", description.strip(), ""]
    shown = [name for name in names if name not in hidden]
    lines.append("flags:" if shown else "flags: none")
    for name in shown:
        flag = values[name]
        if name in required:
            kind = "required"
        elif flag.boolean:
            kind = "off unless given"
        else:
            default = flag.default_unparsed
            kind = flag.parser.syntactic_help or "a string"
            kind += ", optional" if default is None else f", default {default}"
        lines.append(f"  --{name} ({kind})")
        lines += textwrap.wrap(flag.help, 80, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def _not_missing_tpu_notice(record: logging.LogRecord) -> bool:
    """jax logs, at INFO, that it found no TPU runtime each time it picks a backend.

    Under absl's logging set-up that line reaches stderr on every run of a CPU
    or GPU machine. Only that record is dropped: which backend jax picks is
    unchanged (a GPU is still used when there is one), and its warnings pass.
    A logging filter may be a function; adding the same one twice adds it once.
    """
    return not record.getMessage().startswith("Unable to initialize backend 'tpu'")


def run(main: Callable[[], object]) -> None:
    """Run a command's ``main()``; a UserError, or a SystemExit that carries a
    message (``raise SystemExit("error: ...")``), ends as one line, status 2; an
    :class:`Interrupted` run as one line, status 130."""
    logging.getLogger("jax._src.xla_bridge").addFilter(_not_missing_tpu_notice)
    try:
        main()
    except UserError as error:
        fail(error)
    except OSError as error:
        from vae_jax.checkpoint import DISK_FULL  # jax only once something has failed

        if error.errno not in DISK_FULL:
            raise
        fail(error.strerror or error)  # a full disk: the file, the space, what is kept
    except Interrupted as interrupted:
        print(interrupted, file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED) from None
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            fail(exit_.code)
        raise
