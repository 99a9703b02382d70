import re
from dataclasses import fields

from conftest import REPO

from admmprune.runs.config import Config


def test_readme_documents_every_recipe_key():
    readme = (REPO / "README.md").read_text()
    missing = [f.name for f in fields(Config) if not re.search(rf"\| `{f.name}` +\|", readme)]
    assert not missing, f"README's recipe table lacks {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci/run").read_text()
    assert "./test.sh" in readme and "test.sh" in ci


# a wall time: "5 minutes", "~30 min", "4m30s", "2 hours"
WALL_TIME = re.compile(r"\b\d+(?:\.\d+)?(?:-\d+)?\s*(?:minutes?|min|hours?)\b|\b\d+m\d\ds\b")


def _blocks_with_times(text: str) -> list[str]:
    return [block for block in re.split(r"\n\s*\n", text) if WALL_TIME.search(block)]


def test_run_times_name_where_they_were_measured():
    """A wall time in the README or a recipe header cites its measurement in
    docs/results.md and the machine (how many cores, how loaded), not a bare "~5 minutes"."""
    texts = {"README.md": (REPO / "README.md").read_text()}
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        header = []
        for line in recipe.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("# "))
        texts[recipe.name] = " ".join(header)  # a recipe's header is one block
    bare = [f"{name}: {block.strip()[:120]!r}" for name, text in texts.items()
            for block in _blocks_with_times(text)
            if "docs/results.md" not in block or not re.search(r"cores?\b|CPU", block)]
    assert not bare, "wall times without their measurement and machine:\n" + "\n".join(bare)
