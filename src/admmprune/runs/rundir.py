"""A run directory on disk: its config, metrics log, checkpoints and saved weights.

Everything is written so that a crash at any moment leaves the previous state readable:
checkpoints and weights go through a temporary file, fsync and an atomic rename.
Checkpoints carry a sha256 of their bytes, and the previous one is kept
(``checkpoint.prev.pt``): a damaged last checkpoint (a flipped bit, a truncated copy) is
detected on resume and the run continues from the one before.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected from each other
    fcntl = None

import torch
import yaml

from ..jsonfile import dumps
from .config import Config, apply_overrides

__all__ = ["RunError", "CheckpointError", "RunDirectory", "new_run_dir", "load_run_config",
           "atomic_save", "save_checked", "load_checked", "verify_checked", "CHECKPOINT",
           "PREVIOUS_CHECKPOINT", "RESUME_SAFE_KEYS", "resume_changes", "check_output_path",
           "LOCK_FILE", "SOURCES_FILE", "UNSTARTED_FILES", "MODEL_FILE"]

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
# Held (fcntl.flock) by the process running a job in the directory; holds its PID.
LOCK_FILE = "run.lock"
# The user's files the run imported, with their sha256 (runs/sources.py).
SOURCES_FILE = "sources.json"
# What the model of a run's weights files was built with (see runs/build.py).
MODEL_FILE = "model.json"
# What a run writes; a fresh run refuses a directory holding anything else.
RUN_FILES = {"config.yaml", "metrics.jsonl", CHECKPOINT, PREVIOUS_CHECKPOINT, "dense.pt",
             "admm.pt", "model.pt", "summary.json", "admm_residuals.png", "accuracy.png",
             "kept_per_layer.png", SOURCES_FILE, MODEL_FILE, LOCK_FILE}
# The temporary names those files pass through while being written.
_TEMPORARY_SUFFIXES = ("", ".tmp", ".new", ".new.tmp")
# What a run writes before its first checkpoint: a directory holding nothing else (and no
# checkpoint) holds no finished work, and starts over (the same command, or --resume).
# metrics.jsonl may hold the record of a unit killed before its checkpoint was written:
# that work is lost either way, as a resume drops the records after its checkpoint.
UNSTARTED_FILES = {"config.yaml", SOURCES_FILE, "metrics.jsonl"}
# ... and what a kill while writing them, or the first checkpoint, leaves behind
_UNSTARTED_NAMES = {name + suffix for name in UNSTARTED_FILES | {CHECKPOINT}
                    for suffix in _TEMPORARY_SUFFIXES} - {CHECKPOINT}
# A directory holding one of these is a run directory.
_RUN_MARKERS = ("config.yaml", "metrics.jsonl")
# Keys a resumed run may change: where and how fast it runs, and epochs to add. Everything
# else defines what the run is (model, data, ratio, selection, optimisation) and is refused.
RESUME_SAFE_KEYS = {"threads", "device", "progress", "workers", "data_dir", "val_labels",
                    "download", "output_dir", "retraining_epochs"}
# Retraining keys that may still change while retraining has not started (--stage retrain
# after --stage admm: the user chooses how to retrain once ADMM is done).
RETRAIN_KEYS = {"retraining_epochs", "retraining_learning_rate", "retraining_lr_schedule",
                "retraining_augment_shift", "retraining_average_epochs", "retraining_regrow",
                "retraining_regrow_every", "retraining_regrow_until"}


class RunError(RuntimeError):
    """A run cannot proceed (missing checkpoint, wrong run directory...)."""


class CheckpointError(RunError):
    """A checkpoint file is damaged: its checksum, size or contents are wrong."""


def _fsync_dir(path: Path) -> None:
    # the rename itself reaches the disk only when the directory is synced
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


@contextmanager
def _removed_on_error(tmp: Path) -> Iterator[None]:
    """Delete the temporary file ``tmp`` when writing it fails (a full disk, Ctrl-C): the
    target keeps its previous state and no half-written ``*.tmp`` is left behind."""
    try:
        yield
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file, fsync, then rename: a crash (or power loss) mid-write
    never corrupts ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with _removed_on_error(tmp), tmp.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# A checked file: one header line, then the bytes of torch.save. The header holds the
# sha256 and the length of those bytes, so a flipped bit and a truncation are both caught
# before unpickling (which may fail in odd ways, or not at all, on damaged bytes).
_MAGIC = b"ADMMPRUNE-CHECKPOINT 1 sha256="
_HEADER_SIZE = len(_MAGIC) + 64 + len(b" bytes=") + 16 + 1


class _HashingWriter:
    """A file-like sink for torch.save that hashes and counts what passes through."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(memoryview(data).cast("B"))
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


class _Window(io.RawIOBase):
    """The bytes of ``handle`` from ``offset`` on, seen as a file of their own (torch.load
    reads the zip archive after the header without a copy in memory)."""

    def __init__(self, handle: IO[bytes], offset: int) -> None:
        super().__init__()
        self.handle = handle
        self.offset = offset
        handle.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.handle.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        return self.handle.read(size)

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos += self.offset
        return self.handle.seek(pos, whence) - self.offset

    def tell(self) -> int:
        return self.handle.tell() - self.offset


def save_checked(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` with a sha256 of the bytes in a header, written atomically
    (temporary file, fsync, rename); read it back with :func:`load_checked`."""
    tmp = path.with_name(path.name + ".tmp")
    with _removed_on_error(tmp), tmp.open("wb") as handle:
        handle.write(b"\0" * _HEADER_SIZE)  # the header is known only at the end
        writer = _HashingWriter(handle)
        torch.save(obj, writer)
        handle.seek(0)
        handle.write(_MAGIC + writer.sha.hexdigest().encode() + b" bytes="
                     + f"{writer.size:016d}".encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def verify_checked(path: Path) -> bool:
    """Check the header, length and sha256 of a file written by :func:`save_checked`;
    raises CheckpointError naming what is wrong. False for a file without header (a
    checkpoint of an older admmprune: nothing to verify)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(_HEADER_SIZE)
            if not header.startswith(_MAGIC[:10]):
                return False
            try:
                if not header.startswith(_MAGIC) or header[-1:] != b"\n":
                    raise ValueError
                digest = header[len(_MAGIC):len(_MAGIC) + 64].decode("ascii")
                size = int(header[-17:-1])
            except ValueError:
                raise CheckpointError(f"{path}: its header is damaged") from None
            actual = os.fstat(handle.fileno()).st_size - _HEADER_SIZE
            if actual != size:
                raise CheckpointError(f"{path}: holds {actual} bytes after its header where "
                                      f"{size} were written (truncated or extended)")
            sha = hashlib.sha256()
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if sha.hexdigest() != digest:
        raise CheckpointError(f"{path}: its sha256 does not match the one written with it "
                              "(the file was damaged after it was saved)")
    return True


def load_checked(path: Path, device: torch.device | str = "cpu") -> Any:
    """Read a file written by :func:`save_checked` after verifying its checksum (a file of
    an older admmprune, without header, is read as it is); CheckpointError if damaged."""
    checked = verify_checked(path)
    try:
        with path.open("rb") as handle:
            source = _Window(handle, _HEADER_SIZE) if checked else handle
            return torch.load(source, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same answer
        raise CheckpointError(f"cannot read {path} ({err}): the file is corrupt") from None


def check_output_path(path: str | Path, what: str = "--out") -> Path:
    """Refuse to write ``path`` when it is one of a run directory's own files.

    The one rule every writing command applies to the files it is asked to write: no
    command writes over what a run wrote (config.yaml, metrics.jsonl, checkpoints,
    dense.pt, admm.pt, model.pt, summary.json, its plots and lock, or their temporary
    names). A directory is a run directory when it holds config.yaml or metrics.jsonl.

    Args:
        path: the file a command is about to write.
        what: the option that named it, for the message.

    Returns:
        ``path`` as a Path.

    Also refused, as no file can be written there: an existing directory, and a path
    whose parent is a file.

    Raises:
        RunError: ``path`` (after resolving links and ``..``) is a run directory's own file,
            a directory, or below a file.
    """
    path = Path(path)
    target = path.expanduser().resolve()
    parent = target.parent
    if target.is_dir():
        raise RunError(f"{what} {path} is a directory; give the name of a file to write "
                       f"(e.g. {path / 'NAME'})")
    blocking = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise RunError(f"{what} {path}: {blocking} is a file, not a directory; choose a path "
                       "in a directory")
    own = {name + suffix for name in RUN_FILES for suffix in _TEMPORARY_SUFFIXES}
    if target.name in own and any((parent / marker).is_file() for marker in _RUN_MARKERS):
        raise RunError(f"{what} {path} is {parent}'s own {target.name} (a file the run "
                       "wrote); writing it would destroy the run's results. Choose another "
                       "file name (e.g. one outside the run directory)")
    return path


def new_run_dir(config: Config) -> Path:
    """OUTPUT_DIR/NAME-TIMESTAMP, with a suffix if that exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.output_dir) / f"{config.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def load_run_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> Config:
    """The resolved config a run directory was started with, plus ``overrides``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RunError(f"{path} is not valid YAML ({err}); the run directory is damaged") \
            from None
    if not isinstance(saved, dict):
        raise RunError(f"{path} does not hold a mapping of recipe keys; the run directory is "
                       "damaged")
    config = Config()
    apply_overrides(config, saved)
    apply_overrides(config, overrides or {})
    return config.validate()


def resume_changes(saved: dict, new: dict, retraining_started: bool, retrain_epochs_done: int
                   ) -> dict:
    """The keys ``new`` changes relative to the config ``saved`` with a run, as
    {key: [old, new]}; raises RunError when a change would alter what the run is."""
    # a key newer than the saved run ran at its default there: choosing another value is a
    # change like any other (logged, written to config.yaml, refused if it alters the run)
    defaults = Config().to_dict() if saved else {}
    before = {k: saved.get(k, defaults.get(k, v)) for k, v in new.items()}
    changes = {k: [before[k], v] for k, v in new.items() if before[k] != v}
    allowed = RESUME_SAFE_KEYS | (set() if retraining_started else RETRAIN_KEYS)
    refused = sorted(set(changes) - allowed)
    if refused:
        listed = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise RunError(
            f"resuming cannot change what the run is ({listed}); only "
            f"{', '.join(sorted(allowed))} may change. Start a new run (another --run-dir) "
            "for a different configuration")
    if "retraining_epochs" in changes and changes["retraining_epochs"][1] < retrain_epochs_done:
        raise RunError(f"retraining_epochs {changes['retraining_epochs'][1]} is fewer than the "
                       f"{retrain_epochs_done} retraining epochs already done")
    if "retraining_epochs" in changes and retraining_started \
            and new.get("retraining_average_epochs"):
        raise RunError(f"retraining_average_epochs averages the last "
                       f"{new['retraining_average_epochs']} retraining epochs, so "
                       "retraining_epochs cannot change once retraining has started; start a "
                       "new run (another --run-dir) or keep retraining_epochs "
                       f"{changes['retraining_epochs'][0]}")
    return changes


class RunDirectory:
    """The files of one run; see the README's "Command line" section for what each holds."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._metrics = None
        self._lock: int | None = None
        self._created = False

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def previous_checkpoint(self) -> Path:
        return self.path / PREVIOUS_CHECKPOINT

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file() or self.previous_checkpoint.is_file()

    def _present(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)

    def unstarted(self) -> bool:
        """Whether the directory holds no finished work: it exists, has no checkpoint and
        holds nothing but :data:`UNSTARTED_FILES` and their temporary names, or those of a
        first checkpoint being written (a run stopped before its first checkpoint, whatever
        stopped it; or nothing at all)."""
        return self.path.is_dir() and not self.has_checkpoint() \
            and set(self._present()) <= _UNSTARTED_NAMES

    def saved_config(self) -> dict | None:
        """The mapping in config.yaml; None when it is missing or unreadable."""
        try:
            saved = yaml.safe_load((self.path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return None
        return saved if isinstance(saved, dict) else None

    def resumable(self) -> bool:
        """Whether ``--resume`` continues this directory: it holds a checkpoint, or the
        config of a run stopped before its first one (which then starts over)."""
        return self.has_checkpoint() or (self.unstarted() and self.saved_config() is not None)

    def check_fresh(self, config: Config) -> None:
        """Refuse a directory a new run must not write into: a file, an unwritable place,
        or a directory holding anything but an unstarted run of this very config."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"run directory {self.path} is a file; choose another --run-dir")
        if self.checkpoint.exists():
            raise RunError(f"{self.path} already holds a run; resume it (--resume) or "
                           "choose another directory")
        if self.path.is_dir():
            # Allowed: an empty directory, or one where a run of this very config wrote its
            # config and stopped before finishing any work (nothing to lose).
            present = self._present()
            if present and not (self.unstarted()
                                and self.saved_config() == config.to_dict()):
                foreign = [n for n in present if n not in RUN_FILES]
                shown = ", ".join((foreign or present)[:5])
                raise RunError(f"{self.path} already holds files ({shown}) that are not an "
                               "unstarted run of this config; choose another --run-dir (or "
                               "resume that run with --resume)")
        parent = next(p for p in (self.path, *self.path.parents) if p.exists())
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunError(f"cannot write the run directory {self.path}: {parent} is not "
                           "writable; choose another --run-dir or output_dir")

    def create(self, config: Config) -> None:
        """A new run's directory and config.yaml (after :meth:`check_fresh`); records of a
        unit that an earlier start of the run lost before its first checkpoint go."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot create the run directory {self.path}: {err}") from None
        self.truncate_metrics(0)
        self.write_config(config)

    def write_config(self, config: Config) -> None:
        tmp = self.path / "config.yaml.tmp"
        with _removed_on_error(tmp):
            tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        os.replace(tmp, self.path / "config.yaml")

    def metrics_size(self) -> int:
        path = self.path / "metrics.jsonl"
        if self._metrics is not None:
            self._metrics.flush()
        return path.stat().st_size if path.is_file() else 0

    def truncate_metrics(self, size: int) -> None:
        """Drop records logged after the checkpoint that holds ``size``: the work they
        describe was lost with the process and is done (and logged) again."""
        path = self.path / "metrics.jsonl"
        if path.is_file() and path.stat().st_size > size:
            with path.open("r+b") as handle:
                handle.truncate(size)

    def load_checkpoint(self, device: torch.device) -> tuple[dict, Path, list[str]]:
        """The newest intact checkpoint: ``checkpoint.pt``, else ``checkpoint.prev.pt``.

        Returns (state, the file read, what was wrong with the files skipped); raises
        RunError when neither is usable."""
        problems: list[str] = []
        for path in (self.checkpoint, self.previous_checkpoint):
            if not path.is_file():
                problems.append(f"{path.name} is missing")
                continue
            try:
                state = load_checked(path, device)
            except CheckpointError as err:
                problems.append(str(err))
                continue
            if not isinstance(state, dict) or "progress" not in state:
                problems.append(f"{path} is not an admmprune checkpoint")
                continue
            return state, path, problems
        raise RunError("no intact checkpoint to resume from: " + "; ".join(problems)
                       + ". The files are corrupt; start a new run (another --run-dir)")

    def save_checkpoint(self, state: dict) -> None:
        """Write ``checkpoint.pt`` (checksummed, atomically) and keep the one it replaces
        as ``checkpoint.prev.pt``. A crash between the two renames leaves only the
        previous checkpoint, which resuming then uses."""
        tmp = self.path / (CHECKPOINT + ".new")
        save_checked(state, tmp)
        if self.checkpoint.exists():
            os.replace(self.checkpoint, self.previous_checkpoint)
        os.replace(tmp, self.checkpoint)
        _fsync_dir(self.path)

    def save_weights(self, name: str, obj: Any) -> Path:
        path = self.path / name
        atomic_save(obj, path)
        return path

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (flushed at once: a crash keeps it); a NaN
        or infinite value is written as null and marked (:mod:`admmprune.jsonfile`)."""
        if self._metrics is None:
            self._metrics = (self.path / "metrics.jsonl").open("a")
        self._metrics.write(dumps(record) + "\n")
        self._metrics.flush()

    def write_summary(self, summary: dict) -> None:
        self.write_json("summary.json", summary)

    def write_json(self, name: str, obj: Any) -> None:
        """Write RUN_DIR/NAME atomically (a temporary file renamed over it), as valid JSON
        (non-finite numbers null and marked: :mod:`admmprune.jsonfile`)."""
        tmp = self.path / f"{name}.tmp"
        with _removed_on_error(tmp):
            tmp.write_text(dumps(obj, indent=2))
        os.replace(tmp, self.path / name)

    def lock(self) -> None:
        """Hold the run directory for this process (created if missing): an OS lock on
        RUN_DIR/run.lock, released when the process ends however it ends (a killed run
        leaves no stale lock), with this process's PID written into the file.

        Raises:
            RunError: another process holds it (its PID is in the message).
        """
        if fcntl is None or self._lock is not None:
            return
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunError(f"cannot lock the run directory {self.path}: {err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunError(f"{self.path} is in use by another admmprune process (PID "
                           f"{holder}); wait for it to end (or stop it), or choose another "
                           "--run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock, self._created = fd, created

    def unlock(self) -> None:
        """Release :meth:`lock`; a directory it created that holds only the lock file (a run
        that failed before writing anything) is removed with it."""
        if self._lock is None:
            return
        try:
            if self._created and [p.name for p in self.path.iterdir()] == [LOCK_FILE]:
                (self.path / LOCK_FILE).unlink()
                self.path.rmdir()
        except OSError:
            pass  # the directory stays; the lock is released all the same
        os.close(self._lock)  # closing the descriptor releases the flock
        self._lock = None

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        self.unlock()
