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
