"""CPU defaults set before torch loads: cgroup quotas, CPU budget, environment rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from admmprune import runtime
from admmprune.runtime import (
    apply_cpu_defaults,
    available_cpus,
    cgroup_cpu_limit,
    cpu_budget,
    cpu_env_defaults,
    parse_cfs_quota,
    parse_cpu_max,
    physical_core_count,
)

REPO = Path(__file__).resolve().parents[1]
CONTROLLED = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "ADMMPRUNE_NO_CPU_DEFAULTS")


# ---- cgroup quota parsing ------------------------------------------------------------

@pytest.mark.parametrize("text, cpus", [
    ("max 100000\n", None),
    ("max", None),
    ("200000 100000\n", 2.0),
    ("150000 100000", 1.5),
    ("50000 100000", 0.5),
    ("300000", 3.0),            # period omitted: the kernel's 100000
    ("", None),
    ("garbage here", None),
])
def test_parse_cpu_max(text, cpus):
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize("quota, period, cpus", [
    ("-1\n", "100000\n", None),
    ("250000\n", "100000\n", 2.5),
    ("100000", "100000", 1.0),
    ("0", "100000", None),
    ("50000", "0", None),
    ("x", "100000", None),
])
def test_parse_cfs_quota(quota, period, cpus):
    assert parse_cfs_quota(quota, period) == cpus


# ---- CPU budget ---------------------------------------------------------------------

@pytest.mark.parametrize("cores, quota, budget", [
    (2, None, 2),
    (4, 2.0, 2),
    (4, 1.5, 1),    # rounded down: never more threads than the quota pays for
    (4, 2.99, 2),
    (8, 0.5, 1),    # below one CPU: still one thread
    (1, 4.0, 1),    # the quota does not add cores
    (0, None, 1),
])
def test_cpu_budget(cores, quota, budget):
    assert cpu_budget(cores, quota) == budget


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_is_the_tightest_along_the_path(tmp_path):
    _write(tmp_path / "cpu.max", "max 100000\n")
    _write(tmp_path / "a/cpu.max", "150000 100000\n")
    _write(tmp_path / "a/b/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/a/b\n") == 1.5
    assert cgroup_cpu_limit(tmp_path, "0::/\n") is None


def test_cgroup_v2_host_path_missing_in_container_falls_back_to_root(tmp_path):
    _write(tmp_path / "cpu.max", "200000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/kubepods/pod123/abc\n") == 2.0


def test_cgroup_v1_quota(tmp_path):
    proc = "12:memory:/x\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    _write(tmp_path / "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    _write(tmp_path / "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n")
    _write(tmp_path / "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 3.0


def test_cgroup_v1_unlimited_and_no_cgroup_files(tmp_path):
    _write(tmp_path / "cpu/cpu.cfs_quota_us", "-1\n")
    _write(tmp_path / "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path, "1:cpu:/\n") is None
    assert cgroup_cpu_limit(tmp_path / "nothing", "") is None


def test_physical_cores_count_smt_siblings_once(tmp_path):
    for cpu, core in enumerate([0, 1, 0, 1]):        # 4 logical CPUs on 2 cores
        _write(tmp_path / f"cpu{cpu}/topology/physical_package_id", "0\n")
        _write(tmp_path / f"cpu{cpu}/topology/core_id", f"{core}\n")
    assert physical_core_count([0, 1, 2, 3], tmp_path) == 2
    assert physical_core_count([0, 2], tmp_path) == 1
    assert physical_core_count([0, 7], tmp_path) == 2  # no topology for cpu7: its own core


def test_affinity_smaller_than_cpu_count(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    assert available_cpus() == 1


def test_quota_caps_affinity(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(runtime, "physical_core_count", lambda cpus: len(set(cpus)))
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 1.5)
    assert available_cpus() == 1


# ---- which variables are set --------------------------------------------------------

def test_defaults_in_a_clean_environment():
    assert cpu_env_defaults({"PATH": "/bin"}, 3) == {
        "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}


@pytest.mark.parametrize("user, expected", [
    ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}),
    ({"OMP_NUM_THREADS": "4"}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ({"MKL_NUM_THREADS": "1"}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ({"OMP_WAIT_POLICY": "active", "OMP_NUM_THREADS": "8"}, {}),
    ({"OMP_NUM_THREADS": ""}, {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2",
                               "MKL_NUM_THREADS": "2"}),   # empty counts as unset
])
def test_user_settings_are_never_overridden(user, expected):
    defaults = cpu_env_defaults(user, 2)
    assert defaults == expected
    for name, value in user.items():
        if value:
            assert name not in defaults


@pytest.mark.parametrize("value, opted_out", [
    ("1", True), ("true", True), ("yes", True), ("0", False), ("", False), ("off", False)])
def test_opt_out(value, opted_out):
    defaults = cpu_env_defaults({"ADMMPRUNE_NO_CPU_DEFAULTS": value}, 2)
    assert (defaults == {}) is opted_out


def test_cpus_must_be_positive():
    with pytest.raises(ValueError, match="cpus must be >= 1"):
        cpu_env_defaults({}, 0)


def test_apply_sets_only_missing_entries(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")  # as if torch were not loaded yet
    monkeypatch.setattr(runtime, "available_cpus", lambda: 2)
    env = {"OMP_NUM_THREADS": "5"}
    assert apply_cpu_defaults(env) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert env == {"OMP_NUM_THREADS": "5", "OMP_WAIT_POLICY": "PASSIVE"}
    assert apply_cpu_defaults(env) == {}        # second call: nothing left to set
    opted = {"ADMMPRUNE_NO_CPU_DEFAULTS": "1"}
    assert apply_cpu_defaults(opted) == {} and opted == {"ADMMPRUNE_NO_CPU_DEFAULTS": "1"}


def test_apply_does_nothing_once_torch_is_loaded():
    import torch  # noqa: F401  (conftest has loaded it already; this makes it explicit)

    env: dict[str, str] = {}
    assert apply_cpu_defaults(env) == {} and env == {}


# ---- in a fresh interpreter ---------------------------------------------------------

def _python(code_or_args: list[str], **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    env.update(extra)
    return subprocess.run([sys.executable, *code_or_args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


PROBE = ("import admmprune, json, os, torch; print(json.dumps({k: os.environ.get(k) for k in "
         "('OMP_WAIT_POLICY', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')} | "
         "{'torch_threads': torch.get_num_threads()}))")


def _probe(**extra: str) -> dict:
    done = _python(["-c", PROBE], **extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_import_sets_passive_in_a_clean_environment():
    done = _python(["-c", "import admmprune, os; print(os.environ['OMP_WAIT_POLICY'])"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "PASSIVE"


def test_import_keeps_user_values_and_torch_follows_them():
    seen = _probe(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert seen == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": None, "torch_threads": 1}


def test_import_with_opt_out_sets_nothing():
    seen = _probe(ADMMPRUNE_NO_CPU_DEFAULTS="1")
    assert (seen["OMP_WAIT_POLICY"], seen["OMP_NUM_THREADS"], seen["MKL_NUM_THREADS"]) == \
        (None, None, None)


def test_torch_imported_first_means_no_defaults():
    done = _python(["-c", "import torch, admmprune, os; print(os.environ.get('OMP_WAIT_POLICY'))"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


def test_python_m_admmprune_help():
    done = _python(["-m", "admmprune", "--help"])
    assert done.returncode == 0, done.stderr
    assert "usage: admmprune" in done.stdout and "prune" in done.stdout


def test_clean_environment_gives_torch_the_budget():
    seen = _probe()
    budget = str(available_cpus())
    assert seen == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": budget,
                    "MKL_NUM_THREADS": budget, "torch_threads": int(budget)}
