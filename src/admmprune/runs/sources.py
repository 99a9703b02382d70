"""The user's code a run ran: the files of ``imports`` and the local file of each import
spec (model, dataset, task), with their sha256. A run records them (``sources.json`` and
every checkpoint); resuming refuses a run whose code changed since, and says which file."""

from __future__ import annotations

from pathlib import Path

from ..imports import file_sha256, is_spec, spec_source
from .config import Config
from .rundir import RunError

__all__ = ["run_sources", "check_sources"]


def run_sources(config: Config) -> dict[str, str]:
    """{absolute path: sha256} of the imported files and the local files of the specs
    (call after the config is validated: the specs' modules are imported then)."""
    paths = [Path(p) for p in config.imports]
    for key in ("model", "dataset", "task"):
        value = getattr(config, key)
        source = spec_source(value) if is_spec(value) else None
        if source is not None:
            paths.append(source)
    sources: dict[str, str] = {}
    for path in paths:
        key = str(path.resolve())
        if key not in sources:
            try:
                sources[key] = file_sha256(path)
            except OSError as err:
                raise RunError(f"cannot read {path} to record it with the run: {err}") from None
    return sources


def check_sources(saved: dict[str, str] | None, current: dict[str, str]) -> None:
    """Refuse to resume when a file the run imported changed, is gone, or was not imported
    this time; ``saved`` None (a run of an older admmprune) checks nothing.

    Raises:
        RunError: naming each file and what happened to it.
    """
    if saved is None:
        return
    problems = []
    for path, digest in saved.items():
        if path not in current:
            problems.append(f"{path} was imported by the run but not now (pass --import "
                            f"{path}, or keep the spec that imports it)")
        elif current[path] != digest:
            problems.append(f"{path} changed since the run started (sha256 {digest[:12]}... "
                            f"then, {current[path][:12]}... now)")
    if problems:
        raise RunError("resuming would run other code than the run was started with: "
                       + "; ".join(problems) + ". Restore the file, or start a new run "
                       "(another --run-dir)")
