"""What every command-line entry point shares: a user's mistake is one line, not a traceback.

``python -m experiments.<command>`` ends with ``cli.run(main)``. A ``UserError``
(a config out of range, a workdir that cannot hold the run, a dataset that is
not prepared, an argument out of range) prints ``error: <what and what to do>``
on one line and exits with status 2, the status of a usage error. Every other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

USAGE_ERROR = 2


class UserError(ValueError):
    """A mistake in what the command was asked to do, not a bug in the code.

    A ValueError, so callers that catch bad input as ValueError still do."""


def fail(message: object) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with status 2."""
    text = " ".join(str(message).split())  # one line, however the message was built
    if not text.startswith("error: "):
        text = f"error: {text}"
    print(text, file=sys.stderr, flush=True)
    raise SystemExit(USAGE_ERROR)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad argument is one ``error:`` line (argparse prints
    the usage first; ``--help`` shows it)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


class _DropMissingTpuNotice(logging.Filter):
    """jax logs, at INFO, that it found no TPU runtime each time it picks a backend.

    Under absl's logging set-up that line reaches stderr on every run of a CPU
    or GPU machine. Only that record is dropped: which backend jax picks is
    unchanged (a GPU is still used when there is one), and its warnings pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unable to initialize backend 'tpu'")


def quiet_missing_tpu_notice() -> None:
    logger = logging.getLogger("jax._src.xla_bridge")
    if not any(isinstance(f, _DropMissingTpuNotice) for f in logger.filters):
        logger.addFilter(_DropMissingTpuNotice())


def run(main: Callable[[], object]) -> None:
    """Run a command's ``main()``; a UserError, or a SystemExit that carries a
    message (argparse-free refusals of older code), ends as one line, status 2."""
    quiet_missing_tpu_notice()
    try:
        main()
    except UserError as error:
        fail(error)
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            fail(exit_.code)
        raise
