"""Writing an output file safely: into a temporary file next to it, renamed over it only
once complete (and checked), with the permissions a plain ``open()`` would give.

Library writers such as safetensors' ``save_file`` go through ``mkstemp``, whose files are
mode 0600 whatever the umask; :func:`replacing` gives the finished file the mode of a newly
created file instead (0666 less the umask: 0644 under the usual umask 022).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["current_umask", "creation_mode", "replacing"]


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # elsewhere, set and restore at once (a thread creating a file in between would see 0)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def creation_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s directory to write the file to.

    When the block ends normally the temporary file gets :func:`creation_mode` and is
    renamed over ``path`` (atomic on one file system); when it raises, the temporary file
    is removed and ``path`` is left as it was.

    Args:
        path: the file to create or replace.

    Yields:
        The temporary path (it exists, empty; writers may replace it).
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, creation_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
