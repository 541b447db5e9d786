"""Burda et al. 2015, table 1 (MNIST), side by side: one record per cell we ran.

    python -m experiments.iwae_table add --cell iwae_1l_k5 --workdir runs/iwae_k5_121
        --command "python -m experiments.main ..."     (one line)
    python -m experiments.iwae_table render

    python -m experiments.iwae_table attach --cell vae_1l_k1 --rescore runs/rescore/X.json
        --command "python -m experiments.evaluate --params ... --intensity k255"

``attach`` adds a re-score of a cell's parameters on other data
(``experiments.evaluate --params --intensity``) to its record, beside the cell's own
score.

``add`` reads a finished run (its config.json, results.json or a re-score of it,
metrics.jsonl and checkpoint) and writes, under experiments/results/iwae_table/,
``<cell>.json`` (passes, seed, test NLL, ELBO, active units, training hours, the
command) and ``<cell>.msgpack``: theta and phi only, no optimiser state, which
``python -m experiments.evaluate --params <cell>.msgpack`` re-scores without
training. ``render`` writes RESULTS.md from every record, the paper's figure beside
each, and projects the full 3,280-pass schedule from each run's seconds per epoch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from absl import flags

from experiments import cli, factory
from experiments import workdir as wd
from experiments.train import restore_run
from vae_jax import checkpoint
from vae_jax.train import iwae_schedule_epochs

TABLE = Path(__file__).resolve().parent / "results" / "iwae_table"
FULL_SCHEDULE = iwae_schedule_epochs()  # 3,280 passes
# Table 1 of Burda, Grosse & Salakhutdinov 2015 (../shared/REFERENCE.md): test NLL.
PAPER = {
    ("vae", 1, 1): 86.76,
    ("vae", 1, 5): 86.47,
    ("vae", 1, 50): 86.35,
    ("iwae", 1, 1): 86.76,
    ("iwae", 1, 5): 85.54,
    ("iwae", 1, 50): 84.78,
    ("vae", 2, 1): 85.33,
    ("vae", 2, 5): 85.01,
    ("vae", 2, 50): 84.78,
    ("iwae", 2, 1): 85.33,
    ("iwae", 2, 5): 83.89,
    ("iwae", 2, 50): 82.90,
}


def add(
    cell: str, workdir: Path, command: str, rescore: Path | None = None, table: Path = TABLE
) -> dict:
    """Record the finished run in ``workdir`` as ``cell``; returns the record."""
    config, model, state, completed, _ = restore_run(workdir)
    scored_path = rescore or workdir / wd.RESULTS
    scored = json.loads(scored_path.read_text())
    if scored.get("intensity", config.data.intensity) != config.data.intensity:
        raise cli.UserError(
            f"{scored_path} scored MNIST at {scored['intensity']}, but the run trained at "
            f"{config.data.intensity}: record the run's own score, and attach this one"
        )
    if scored.get("train_step") not in (None, int(state.step)):
        raise cli.UserError(
            f"{scored_path} scored step {scored['train_step']}, but the "
            f"checkpoint in {workdir} is at step {int(state.step)}: re-score it first"
        )
    seconds = [m["seconds"] for m in wd.read_metrics(workdir, completed)]
    record_config = wd.read_config_record(workdir)
    objective = record_config["objective"]
    kind = "iwae" if objective["name"] == "iwae" else "vae"
    layers = 2 if int(record_config["model"].get("top_latent_dim", 0)) else 1
    k = int(objective["num_samples"])
    record = {
        "cell": cell,
        "objective": kind,
        "stochastic_layers": layers,
        "k": k,
        "gradient": objective.get("gradient", "reparam"),
        "passes": completed,
        "train_step": int(state.step),
        "of_passes": FULL_SCHEDULE,
        "seeds": [int(config.seed)],
        "test_nll": scored["test_nll"],
        "num_importance_samples": scored["num_importance_samples"],
        "test_examples": scored["test_examples"],
        "test_elbo": scored["test_elbo"],
        "active_units": scored["active_units"],
        "active_units_per_layer": scored.get("active_units_per_layer"),
        "latent_units": model.latent_dim,
        "paper_nll": PAPER.get((kind, layers, k)),
        "train_hours": sum(seconds) / 3600,
        "seconds_per_epoch": float(np.median(seconds)) if seconds else None,
        "is_seconds": scored.get("is_seconds"),
        "command": command,
        "config": record_config,
    }
    params = table / f"{cell}.msgpack"
    checkpoint.save(params, {"theta": state.theta, "phi": state.phi})
    record["params_sha256"] = sha256(params)
    wd.write_json(table / f"{cell}.json", record)
    return record


def sha256(path: Path) -> str:
    """The file's SHA-256: a record names the one parameter file it describes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def protocol(record_config: dict) -> str:
    """The short name of a run's data and start: scale, training images, output bias,
    optimiser (a record from before a key existed reads as what that run used)."""
    config = wd.config_from_record(record_config)
    scale = factory.INTENSITY_LABELS[config.data.intensity]
    images = {"classic": "50k", "burda": "59,600"}[config.data.split]
    bias = {"zero": "zero bias", "train_mean_logit": "bias at train mean"}[config.model.output_bias]
    optimizer = {"burda_adam": "authors' Adam"}.get(config.optimizer.name, config.optimizer.name)
    return f"{scale}, {images}, {bias}, {optimizer}"


def attach(cell: str, rescore: Path, command: str, table: Path = TABLE) -> dict:
    """Add ``rescore`` (an ``experiments.evaluate --params`` JSON of this cell's
    parameters) to the cell's record, keyed by the intensity it scored on."""
    record_path = table / f"{cell}.json"
    if not record_path.exists():
        raise cli.UserError(f"no cell {cell!r}: {record_path} does not exist")
    record = json.loads(record_path.read_text())
    scored = json.loads(Path(rescore).read_text())
    if "intensity" not in scored:
        raise cli.UserError(f"{rescore} names no intensity: re-score with experiments.evaluate")
    if scored.get("params_sha256") != record.get("params_sha256"):
        raise cli.UserError(
            f"{rescore} scored {scored.get('params', 'no parameter file')}, not cell {cell!r}'s "
            "parameters (their SHA-256 differs): re-score the cell's own .msgpack"
        )
    keep = ("test_nll", "num_importance_samples", "test_examples", "test_elbo", "data")
    entry = {key: scored[key] for key in keep} | {"command": command}
    record.setdefault("rescores", {})[scored["intensity"]] = entry
    wd.write_json(record_path, record)
    return record


def render(table: Path = TABLE) -> Path:
    """RESULTS.md: one row per recorded cell, ordered as the paper's table."""
    # a cell is a JSON beside its .msgpack (bench.json is no cell)
    cells = [p for p in table.glob("*.json") if p.with_suffix(".msgpack").exists()]
    rows = [json.loads(p.read_text()) for p in sorted(cells)]
    rows.sort(key=lambda r: (r["stochastic_layers"], r["objective"], r["k"]))
    lines = [
        "# Burda et al. 2015, table 1 (MNIST), as measured here",
        "",
        "Written by `python -m experiments.iwae_table render` from the records beside it.",
        "Test NLL by IS over all 10,000 fixed-bit test images, one seed each. A run of",
        "fewer passes than the paper's 3,280 is a truncated schedule and is labelled so;",
        "`full schedule, projected` is the run's median seconds per epoch times 3,280.",
        "",
        "`protocol` is the data the cell trained and was scored on (MNIST bytes / 255 or",
        "/ 256, the training images), the output bias's start and the optimiser; the",
        "paper's is k/255, 59,600 images. `at k/255` re-scores a k/256 cell's theta and phi",
        "on k/255 test bits drawn with the same key (paired), without training: its",
        "command is in the cell's record (`rescores`). The commands of k/256 cells ran",
        "before 2026-12-04, when the IWAE configs had that protocol: to rerun one as it",
        f"was, add `{factory.OLD_IWAE_PROTOCOL}`.",
        "",
        "| model | k | gradient | passes | seeds | protocol | test NLL | at k/255 "
        "| paper (3,280 passes) | test ELBO | active units | train hours | s / epoch "
        "| full schedule, projected | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_layer = r.get("active_units_per_layer") or [r["active_units"]]
        units = " + ".join(str(u) for u in per_layer) + f" / {r['latent_units']}"
        seconds = r["seconds_per_epoch"]  # None: a run whose metrics held no epoch
        per_epoch = f"{seconds:.2f}" if seconds else "n/a"
        projected = f"{seconds * r['of_passes'] / 3600:.1f} h" if seconds else "n/a"
        layers = "1 layer" if r["stochastic_layers"] == 1 else f"{r['stochastic_layers']} layers"
        k255 = r.get("rescores", {}).get("k255")
        at_k255 = f"{k255['test_nll']:.2f} (IS-{k255['num_importance_samples']})" if k255 else ""
        if wd.config_from_record(r["config"]).data.intensity == "k255":
            at_k255 = "(trained at k/255)"  # its test NLL is already on k/255 bits
        lines.append(
            f"| {r['objective'].upper()}, {layers} | {r['k']} | {r['gradient']} "
            f"| {r['passes']} of {r['of_passes']} | {len(r['seeds'])} | {protocol(r['config'])} "
            f"| {r['test_nll']:.2f} (IS-{r['num_importance_samples']}) | {at_k255} "
            f"| {r['paper_nll']} "
            f"| {r['test_elbo']:.2f} | {units} | {r['train_hours']:.2f} "
            f"| {per_epoch} | {projected} | `{r['command']}` |"
        )
    out = table / "RESULTS.md"
    wd.write_text(out, "\n".join(lines) + "\n")
    return out


def _define(values: flags.FlagValues) -> None:
    cli.flag(values, "cell", None, "name of the table cell, e.g. iwae_1l_k5")
    cli.flag(values, "workdir", None, "the finished run")
    cli.flag(values, "command", None, "the command that trained it")
    cli.flag(
        values, "rescore", None, "a re-score JSON of the run to record instead of results.json"
    )


def main(argv=None):
    args = cli.parse(argv, _define, __doc__, positional=("action",))
    if args.action == "render":
        print(render())
        return None
    if args.action == "attach":
        if None in (args.cell, args.rescore, args.command):
            raise cli.UserError("attach needs --cell, --rescore and --command (see --help)")
        attach(args.cell, Path(args.rescore), args.command)
        print(render())
        return None
    if args.action != "add":
        raise cli.UserError(f"unknown action {args.action!r}: choose add, attach or render")
    missing = [
        f"--{name}" for name in ("cell", "workdir", "command") if getattr(args, name) is None
    ]
    if missing:
        raise cli.UserError(f"add needs {', '.join(missing)} (see --help)")
    record = add(args.cell, Path(args.workdir), args.command, args.rescore and Path(args.rescore))
    print(render())
    return record


if __name__ == "__main__":
    cli.run(main)
