"""The library as a user gets it: run by `make check-wheel` in a fresh venv that holds
the oldest versions pyproject.toml allows (requirements/oldest.txt), then the built
wheel and nothing else. Not a pytest module: it needs that venv.

Checks that installing the wheel kept the user's versions, pulled in none of the
experiment tools, and that the README's 15-line example runs as written.
"""

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import vae_jax

    where = Path(vae_jax.__file__).resolve()
    assert where.parent != ROOT / "vae_jax", f"vae_jax was imported from the repository ({where})"
    oldest = (ROOT / "requirements" / "oldest.txt").read_text().splitlines()
    for name, version in (line.split("==") for line in oldest if "==" in line):
        installed = importlib.metadata.version(name)
        assert installed == version, f"the wheel changed {name}: {version} -> {installed}"
    # (absl-py comes with optax itself, so it is no sign of the experiment tools)
    for tool in ("tensorflow_datasets", "ml_collections", "matplotlib", "tqdm"):
        assert importlib.util.find_spec(tool) is None, f"the wheel pulled in {tool}"
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"<!-- example -->\n```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(example, "README.md example", "exec"), {"__name__": "__main__"})
    versions = ", ".join(f"{n} {importlib.metadata.version(n)}" for n in ("jax", "flax", "optax"))
    print(f"wheel check passed: vae_jax from {where.parent}, beside {versions}", file=sys.stderr)


if __name__ == "__main__":
    main()
