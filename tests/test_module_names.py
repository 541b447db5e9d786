"""No module of ours may shadow a standard-library module.

Python puts a script's directory first on sys.path, so a file named like a stdlib
module (experiments/profile.py did) replaces it for everything that process
imports: torch's optimiser imports cProfile -> profile, which then imported jax in
the PyTorch reference's venv, and `make bench` died.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUR_TREES = ("vae_jax", "experiments", "tests")


def importable_names(directory: Path) -> dict[str, Path]:
    """Top-level names a directory provides when it is on sys.path: its .py files'
    stems and its subdirectories that hold Python files (packages, namespace or not)."""
    names = {p.stem: p for p in directory.glob("*.py")}
    names |= {d.name: d for d in directory.iterdir() if d.is_dir() and any(d.rglob("*.py"))}
    return names


def our_module_names() -> dict[str, list[str]]:
    """name -> the files or directories that provide it: the repo root's (the cwd of
    every command) and those of every directory under our trees (any of them is
    sys.path[0] when a script in it runs)."""
    found: dict[str, list[str]] = {name: [name] for name in OUR_TREES}
    found.update({p.stem: [p.name] for p in ROOT.glob("*.py")})
    directories = []
    for tree in OUR_TREES:
        directories += [ROOT / tree]
        directories += [d for d in (ROOT / tree).rglob("*") if d.is_dir()]
    for directory in directories:
        parts = directory.relative_to(ROOT).parts
        if any(part == "__pycache__" or part.startswith(".") for part in parts):
            continue
        for name, path in importable_names(directory).items():
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_the_walk_sees_our_modules():
    names = our_module_names()
    for expected in ("vae_jax", "experiments", "tests", "bench", "configs", "conftest"):
        assert expected in names, expected


def test_no_module_of_ours_shadows_the_standard_library():
    clashes = {
        name: places
        for name, places in our_module_names().items()
        if name in sys.stdlib_module_names
    }
    assert not clashes, f"these names shadow standard-library modules: {clashes}"
