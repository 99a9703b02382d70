"""CPU defaults that keep torch fast on a shared or CPU-limited machine.

OpenMP reads its settings once, when torch's shared libraries load, so they must be in
``os.environ`` before the first ``import torch``; ``admmprune/__init__.py`` calls
:func:`apply_cpu_defaults` first for that reason. This module must never import torch.

What is set, only where the user has not set it already:

- ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP workers sleep instead of spinning. With the
  default (spinning) policy a LeNet-5 training step on a 2-core machine ran 20-30x slower
  as soon as one other process was busy: the spinning workers took the CPU the
  descheduled sibling needed to reach the barrier they were waiting at.
- ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` = :func:`cpu_budget`: the physical cores
  this process may run on (``os.sched_getaffinity``), capped by the cgroup CPU quota
  (containers, ``docker --cpus``, Kubernetes limits), which torch's own default ignores.
  If the user set either variable, neither is touched (torch reads both; one set alone is
  a choice we should not second-guess).

``ADMMPRUNE_NO_CPU_DEFAULTS=1`` turns all of this off. If torch is already imported when
admmprune is, the variables can no longer act and nothing is set.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path

__all__ = [
    "OPT_OUT_VARIABLE",
    "parse_cpu_max",
    "parse_cfs_quota",
    "cgroup_cpu_limit",
    "physical_core_count",
    "cpu_budget",
    "available_cpus",
    "opted_out",
    "cpu_env_defaults",
    "apply_cpu_defaults",
]

log = logging.getLogger(__name__)

OPT_OUT_VARIABLE = "ADMMPRUNE_NO_CPU_DEFAULTS"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_FALSE_WORDS = {"", "0", "false", "no", "off"}


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("QUOTA PERIOD"); None when unlimited.

    ``"max 100000"`` -> None, ``"200000 100000"`` -> 2.0, ``"150000 100000"`` -> 1.5.
    Unreadable text also gives None: a limit we cannot parse is not one we can honour.
    """
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    period_text = parts[1] if len(parts) > 1 else "100000"  # the kernel's default period
    return _quota_cpus(parts[0], period_text)


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; None if -1."""
    return _quota_cpus(quota_text.strip(), period_text.strip())


def _quota_cpus(quota_text: str, period_text: str) -> float | None:
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    if quota <= 0 or period <= 0:  # -1 is v1's "unlimited"
        return None
    return quota / period


def _own_cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) of a ``/proc/self/cgroup`` text."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(mount: Path, path: str | None) -> list[Path]:
    """``mount/path`` and every folder above it up to ``mount``.

    A limit set on any ancestor applies to us too. Inside a container the path printed in
    /proc/self/cgroup may be the host's and not exist under the mount; the mount root
    (the container's own cgroup) is always included.
    """
    folders = [mount]
    parts = [p for p in (path or "").split("/") if p and p != ".."]
    for i in range(1, len(parts) + 1):
        folders.append(mount.joinpath(*parts[:i]))
    return folders


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_limit(root: Path | str = "/sys/fs/cgroup",
                     proc_cgroup: str | None = None) -> float | None:
    """The tightest cgroup CPU quota on this process, in CPUs; None when there is none.

    Reads cgroup v2 (``ROOT/cpu.max``) and v1 (``ROOT/cpu[,cpuacct]/cpu.cfs_quota_us``)
    along the process's own cgroup path and its ancestors. ``proc_cgroup`` is the text of
    ``/proc/self/cgroup`` (read when None); both arguments exist for tests.
    """
    root = Path(root)
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    v2_path, v1_path = _own_cgroup_paths(proc_cgroup)
    limits: list[float] = []
    for folder in _ancestors(root, v2_path):
        text = _read(folder / "cpu.max")
        limit = parse_cpu_max(text) if text is not None else None
        if limit is not None:
            limits.append(limit)
    for mount in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        for folder in _ancestors(mount, v1_path):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            limit = parse_cfs_quota(quota, period) if quota and period else None
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def physical_core_count(cpus: Iterable[int],
                        sysfs: Path | str = "/sys/devices/system/cpu") -> int:
    """Distinct physical cores among logical ``cpus`` (SMT siblings count once).

    torch's own default is one thread per physical core; a second thread on a hyperthread
    sibling rarely helps its kernels. A CPU whose topology cannot be read counts as a core.
    """
    sysfs = Path(sysfs)
    cores: set[tuple[str, str] | int] = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        package, core = _read(topology / "physical_package_id"), _read(topology / "core_id")
        cores.add((package.strip(), core.strip()) if package and core else cpu)
    return len(cores)


def cpu_budget(cores: int, quota_cpus: float | None) -> int:
    """Threads for torch: ``cores`` capped by the quota, rounded down, at least 1.

    Rounding down (a quota of 1.5 CPUs gives 1 thread): the quota is shared with every
    other thread of the cgroup (the Python thread, data loaders, other processes), and
    when the cgroup is throttled all of torch's workers stop at once, so a thread count
    above the quota buys stalls, not speed. Below one CPU there is still one thread.
    """
    budget = max(1, cores)
    if quota_cpus is not None:
        budget = min(budget, max(1, math.floor(quota_cpus + 1e-9)))
    return budget


def available_cpus() -> int:
    """:func:`cpu_budget` of this process: its affinity's physical cores and cgroup quota."""
    try:
        allowed: Iterable[int] = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        allowed = range(os.cpu_count() or 1)
    return cpu_budget(physical_core_count(allowed), cgroup_cpu_limit())


def _is_set(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip() != ""


def opted_out(environ: Mapping[str, str]) -> bool:
    """True when ``ADMMPRUNE_NO_CPU_DEFAULTS`` holds anything but empty/0/false/no/off."""
    return environ.get(OPT_OUT_VARIABLE, "").strip().lower() not in _FALSE_WORDS


def cpu_env_defaults(environ: Mapping[str, str], cpus: int) -> dict[str, str]:
    """The variables to add to ``environ``: never one the user has set (non-empty).

    ``OMP_WAIT_POLICY=PASSIVE``; ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` = ``cpus``
    unless either is set. Empty under the opt-out ``ADMMPRUNE_NO_CPU_DEFAULTS=1``.
    """
    if cpus < 1:
        raise ValueError(f"cpus must be >= 1, got {cpus}")
    if opted_out(environ):
        return {}
    defaults = {}
    if not _is_set(environ, "OMP_WAIT_POLICY"):
        defaults["OMP_WAIT_POLICY"] = "PASSIVE"
    if not any(_is_set(environ, name) for name in THREAD_VARIABLES):
        defaults.update({name: str(cpus) for name in THREAD_VARIABLES})
    return defaults


def apply_cpu_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Add :func:`cpu_env_defaults` to ``environ`` (``os.environ``); return what was set.

    Does nothing when torch is already imported (OpenMP has read its environment; setting
    variables now would only mislead child processes and readers of the environment).
    """
    target = os.environ if environ is None else environ
    if opted_out(target):
        return {}
    if "torch" in sys.modules:
        log.debug("torch was imported before admmprune; CPU thread defaults not applied "
                  "(set OMP_WAIT_POLICY=PASSIVE before importing torch on a shared machine)")
        return {}
    defaults = cpu_env_defaults(target, available_cpus())
    target.update(defaults)
    if defaults:
        log.debug("CPU defaults set: %s", defaults)
    return defaults
