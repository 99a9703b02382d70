"""What a run ran and read: the user's code (the files of ``imports`` and the local file of
each import spec: model, dataset, task, with their sha256) and the checksums of the data
its dataset read.

A run records its sources (``sources.json``, ``summary.json`` and every checkpoint) and its
data checksums (every checkpoint, ``summary.json``). Resuming refuses a run whose code or
data changed since; the commands that rebuild a finished run's model from its config
(eval, export, shrink, draw) refuse a run whose code changed unless allowed, and compare
does not reuse such a run. Each says which file."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

from ..imports import file_sha256, is_spec, spec_source
from .config import Config
from .rundir import SOURCES_FILE, RunError

__all__ = ["run_sources", "source_changes", "check_sources", "recorded_sources",
           "check_run_sources", "check_data_checksums", "ALLOW_CHANGED_SOURCES"]

# The flag of the commands that rebuild a run's model: run anyway, with a warning.
ALLOW_CHANGED_SOURCES = "--allow-changed-sources"


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


def source_changes(saved: Mapping[str, str] | None, current: Mapping[str, str]) -> list[str]:
    """How the files a run recorded (``saved``) differ from what the same config imports
    now (``current``), one sentence per file; empty when they are the same, and when
    ``saved`` is None (a run of an older admmprune: nothing to compare)."""
    if saved is None:
        return []
    problems = []
    for path, digest in saved.items():
        if path not in current:
            problems.append(f"{path} was imported by the run but not now (pass --import "
                            f"{path}, or keep the spec that imports it)")
        elif current[path] != digest:
            problems.append(f"{path} changed since the run started (sha256 {digest[:12]}... "
                            f"then, {current[path][:12]}... now)")
    return problems


def check_sources(saved: dict[str, str] | None, current: dict[str, str]) -> None:
    """Refuse to resume when a file the run imported changed, is gone, or was not imported
    this time; ``saved`` None (a run of an older admmprune) checks nothing.

    Raises:
        RunError: naming each file and what happened to it.
    """
    problems = source_changes(saved, current)
    if problems:
        raise RunError("resuming would run other code than the run was started with: "
                       + "; ".join(problems) + ". Restore the file, or start a new run "
                       "(another --run-dir)")


def recorded_sources(run_dir: str | Path) -> dict[str, str] | None:
    """RUN_DIR/sources.json; None when the run recorded none (it imported no file of the
    user's, or an older admmprune made it).

    Raises:
        RunError: the file exists but is not a mapping of paths to sha256 digests.
    """
    path = Path(run_dir) / SOURCES_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path} cannot be read ({err}); the run directory is damaged. Pass "
                       f"{ALLOW_CHANGED_SOURCES} to use the run without checking its code") \
            from None
    if not isinstance(saved, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in saved.items()):
        raise RunError(f"{path} does not map file paths to sha256 digests; the run directory "
                       f"is damaged. Pass {ALLOW_CHANGED_SOURCES} to use the run without "
                       "checking its code")
    return saved


def check_run_sources(run_dir: str | Path, config: Config, *,
                      allow_changed: bool = False) -> list[str]:
    """The check of every command that rebuilds a finished run's model from its config:
    the files the run imported (RUN_DIR/sources.json) must be what ``config`` imports now,
    or the command would measure (export, draw...) another model than the run trained.

    Args:
        run_dir: the run directory.
        config: its config as the command read it (validated: the specs are imported).
        allow_changed: go on with a warning on stderr naming each changed file
            (``--allow-changed-sources``) instead of refusing.

    Returns:
        The differences (empty when none, or when the run recorded no sources).

    Raises:
        RunError: a recorded file changed, is gone or is no longer imported, and
            ``allow_changed`` is false; or sources.json is damaged.
    """
    try:
        problems = source_changes(recorded_sources(run_dir), run_sources(config))
    except RunError:
        if not allow_changed:
            raise
        problems = [f"{Path(run_dir) / SOURCES_FILE} cannot be read"]
    if problems and not allow_changed:
        raise RunError(f"{run_dir} was made with other code than its config imports now: "
                       + "; ".join(problems) + ". Its model would be rebuilt from the "
                       "changed code, and the results would not be the run's. Restore the "
                       f"file, or pass {ALLOW_CHANGED_SOURCES} to run anyway")
    if problems:
        print(f"admmprune: warning: {run_dir} was made with other code than its config "
              f"imports now ({'; '.join(problems)}); going on as {ALLOW_CHANGED_SOURCES} "
              "asks: the model is rebuilt from the code as it is now", file=sys.stderr)
    return problems


def check_data_checksums(saved: Mapping[str, str] | None, current: Mapping[str, str]) -> None:
    """Refuse to resume on other data than the run read: the checksums its dataset recorded
    (``DataSplits.checksums``, e.g. the text splits' sha256) against those of the data read
    now. Only what both hold is compared, so moved data (another ``data_dir``) still fits;
    ``saved`` None (a run of an older admmprune) checks nothing.

    Raises:
        RunError: naming each part of the data that differs.
    """
    if not saved:
        return
    problems = [f"{name} (sha256 {digest[:12]}... then, {current[name][:12]}... now)"
                for name, digest in saved.items()
                if name in current and current[name] != digest]
    if problems:
        raise RunError("resuming would train on other data than the run was started with: "
                       f"{'; '.join(problems)} changed. data_dir may change when the data "
                       "moved, not the data itself: point --data-dir at the run's data, or "
                       "start a new run (another --run-dir)")
