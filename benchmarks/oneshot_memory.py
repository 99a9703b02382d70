"""Prune a model several times larger than the memory the pruning process may allocate:
``prune_checkpoint`` reads one block at a time from the safetensors checkpoint.

A Llama of random weights (pruning's time and memory do not depend on training) is saved as
a Hugging Face directory (config.json + model.safetensors). A child process then imports
what it needs, measures its data segment (``VmData``: its private writable mappings, the
interpreter's and libraries' included), caps it with ``RLIMIT_DATA`` at that baseline plus
``--limit-mib`` and prunes the directory into a new one by SparseGPT at 50%, one block in
memory at a time. Since Linux 4.7 ``RLIMIT_DATA`` counts every private writable mapping:
torch's tensors and malloc's heap, but also a file mapped private and writable, which is how
safetensors' default (``mmap``) reader maps a whole checkpoint file, so the library reads
with its ``pread`` backend (safetensors 0.8 on); read-only and shared mappings, and the page
cache, are not counted.

The children run with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB
(``--mmap-threshold``): by default glibc raises that threshold to the size of each large
block freed (up to 32 MiB), after which tensors of a few MiB come from the heap, which keeps
their freed space in the data segment until a ``malloc_trim`` (the library trims after each
block: ``admmprune.posttraining.trim_heap``), and accelerate's ``init_empty_weights``
allocates every parameter before moving it to ``meta``, which spreads the heap over about the
model's size (untouched, so not resident, but counted by the cap). ``--default-malloc`` adds
a capped run with glibc's defaults; ``--uncapped`` a run without a cap under glibc's
defaults, for time and resident memory as users run it.
``--load-whole`` adds a child that reads the whole checkpoint into memory under the same cap
and must fail: that shows the cap binds. A child's failure is reported as its exit status and
its error; a child that does not finish in ``--timeout`` seconds is killed.

    python benchmarks/oneshot_memory.py --default-malloc --uncapped --load-whole  # 1.7 GiB
    python benchmarks/oneshot_memory.py --layers 72                                # 8x
    python benchmarks/oneshot_memory.py --smoke                                    # tiny

Target (issue 32): a model at least 4x the cap is pruned without running out of memory.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MIB = 2**20
TARGET = 4.0
# glibc's default mmap threshold rises to the size of every large block freed (up to 32 MiB),
# after which blocks of that size come from the heap, which keeps the freed space: fixed,
# every tensor of 128 KiB or more gets its own mapping, returned when the tensor is freed
MMAP_THRESHOLD = 128 * 1024
SMOKE_LAYERS, SMOKE_LIMIT_MIB = 16, 32
RESULT = "RESULT "  # the child's last stdout line: RESULT {json}


# -- the child -----------------------------------------------------------------------------
def _status(key: str) -> int:
    """A ``/proc/self/status`` figure in bytes (``VmData``, ``RssAnon``, ``VmHWM``...)."""
    with open("/proc/self/status") as status:
        match = re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {key}: this benchmark needs Linux")
    return int(match.group(1)) * 1024


class _Peaks:
    """Samples ``VmData`` and ``RssAnon`` every few milliseconds on a thread of its own and
    keeps their maxima: the kernel keeps no peak of either."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.data = self.anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        try:
            self.data = max(self.data, _status("VmData"))
            self.anon = max(self.anon, _status("RssAnon"))
        except MemoryError:  # at the cap: the next sample will do
            pass

    def start(self) -> None:
        self._thread.start()  # before the baseline: its stack is part of it

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _malloc_trim() -> None:
    """Give the heap's free memory back to the system (glibc), so that the baseline holds
    no free space that the capped work could reuse without counting it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline keeps what it has
        pass


def _calibration(args: argparse.Namespace) -> list:
    import torch

    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (args.calibration, args.context), generator=g)
    return list(tokens.split(args.batch))


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Run one task (``prune`` or ``load``) under the cap; the figures it measured."""
    import torch
    from safetensors.torch import load_file

    from admmprune.posttraining import prune_checkpoint
    from admmprune.posttraining.checkpoint import empty_causal_lm, weight_files

    torch.set_num_threads(args.threads)
    batches = _calibration(args)
    # import the model's code now (transformers imports it lazily), not under the cap: the
    # cap is for data; the model built here has no weights (they are on meta)
    empty_causal_lm(args.source)
    gc.collect()
    _malloc_trim()
    peaks = _Peaks()
    peaks.start()
    base_data, base_anon = _status("VmData"), _status("RssAnon")
    limit = base_data + args.limit_mib * MIB
    if args.limit_mib:  # 0: no cap, for comparison
        resource.setrlimit(resource.RLIMIT_DATA,
                           (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    result: dict[str, Any] = {"base_data": base_data, "base_anon": base_anon, "limit": limit,
                              "base_rss": _status("VmRSS")}
    start = time.perf_counter()
    try:
        if args.task == "prune":
            records = prune_checkpoint(args.source, args.out, batches, args.method,
                                       all_percent=args.percent, progress=False)
            result["kept"] = sum(r.kept for r in records)
            result["pruned_total"] = sum(r.total for r in records)
        else:
            # every tensor read into memory of its own, as a model held whole needs them
            tensors: dict[str, torch.Tensor] = {}
            for path in sorted(set(weight_files(args.source).values())):
                tensors.update(load_file(path, backend="pread"))
            result["loaded"] = sum(t.numel() * t.element_size() for t in tensors.values())
        result["ok"] = True
    except BaseException as error:  # MemoryError, torch's RuntimeError "can't allocate"...
        result["ok"] = False
        lines = str(error).strip().splitlines()  # MemoryError() has no message
        result["error"] = type(error).__name__ + (f": {lines[0][:300]}" if lines else "")
    result["seconds"] = time.perf_counter() - start
    peaks.stop()
    result["peak_data"] = peaks.data
    result["peak_anon"] = peaks.anon
    # not ru_maxrss: Linux carries it over from the forking parent's memory across exec
    result["peak_rss"] = _status("VmHWM")
    return result


# -- the parent ----------------------------------------------------------------------------
def build_model(directory: Path, args: argparse.Namespace) -> int:
    """Save a random Llama of the arguments' size as a Hugging Face directory; its weight
    bytes."""
    import torch
    import transformers

    from admmprune.models.llama import llama_config

    torch.manual_seed(0)
    config = llama_config(n_layer=args.layers, n_embd=args.width, n_head=args.heads,
                          n_kv_head=args.kv_heads, intermediate=args.intermediate,
                          context=args.context)
    model = transformers.LlamaForCausalLM(config)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(directory, safe_serialization=True)
    del model
    return size


def run_child(task: str, source: Path, out: Path, args: argparse.Namespace,
              mmap_threshold: int, capped: bool = True) -> dict[str, Any]:
    """Run this script as a child doing ``task`` (under the cap unless not ``capped``); its
    figures, or how it failed (``ok`` False, ``error``), never hanging past ``--timeout``."""
    command = [sys.executable, os.path.abspath(__file__), "--child", task, "--source",
               str(source), "--out", str(out),
               "--limit-mib", str(args.limit_mib if capped else 0),
               "--method", args.method, "--percent", str(args.percent),
               "--calibration", str(args.calibration), "--context", str(args.context),
               "--batch", str(args.batch), "--threads", str(args.threads)]
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if mmap_threshold:  # read by glibc when the process starts
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                              stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "returncode": None,
                "error": f"timed out after {args.timeout:g} s (killed)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if lines:
        result = json.loads(lines[-1][len(RESULT):])
    else:  # gone before it could answer: a signal (the OOM killer), an abort, a crash
        if done.returncode < 0:
            how = f"killed by {signal.Signals(-done.returncode).name}"
        else:
            how = f"exited {done.returncode} without a result"
        tail = (done.stderr.strip().splitlines() or [""])[-1][:300]
        result = {"ok": False, "error": f"{how}: {tail}" if tail else how}
    result["returncode"] = done.returncode
    return result


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:.0f}"


def _row(name: str, r: dict[str, Any]) -> list[str]:
    base = r.get("base_data")
    return [name, "ok" if r["ok"] else f"FAILED (exit {r['returncode']})",
            f"{r['seconds']:.1f}" if "seconds" in r else "-", _mib(base),
            _mib(r["peak_data"] - base) if base is not None else "-",
            _mib(r["peak_anon"] - r["base_anon"]) if "peak_anon" in r else "-",
            _mib(r.get("base_rss")), _mib(r.get("peak_rss"))]


def _malloc(threshold: int) -> str:
    return f"MALLOC_MMAP_THRESHOLD_={threshold}" if threshold else "glibc's default malloc"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=36, help="decoder blocks")
    parser.add_argument("--width", type=int, default=1024, help="hidden size")
    parser.add_argument("--heads", type=int, default=8, help="query heads")
    parser.add_argument("--kv-heads", type=int, default=8, help="key/value heads")
    parser.add_argument("--intermediate", type=int, default=2816, help="MLP width")
    parser.add_argument("--context", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--calibration", type=int, default=4, help="calibration sequences")
    parser.add_argument("--batch", type=int, default=4, help="sequences per batch")
    parser.add_argument("--limit-mib", type=int, default=432,
                        help="the cap on the pruning process's data above its baseline (MiB)")
    parser.add_argument("--method", default="sparsegpt", help="the layer method")
    parser.add_argument("--percent", type=float, default=50.0, help="share removed (%%)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--mmap-threshold", type=int, default=MMAP_THRESHOLD,
                        help="glibc's MALLOC_MMAP_THRESHOLD_ in the children, bytes (0: "
                             "glibc's default, which rises as large blocks are freed)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="also prune under glibc's default malloc settings")
    parser.add_argument("--uncapped", action="store_true",
                        help="also prune without a cap under glibc's default malloc settings "
                             "(time and memory for comparison)")
    parser.add_argument("--load-whole", action="store_true",
                        help="also read the whole checkpoint into memory under the cap (it "
                             "must fail)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds a child may run before it is killed")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the model and its pruned copies go (default: a "
                             "temporary directory, removed at the end)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, seconds")
    parser.add_argument("--child", choices=("prune", "load"), default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        args.task = args.child
        result = child(args)
        print(RESULT + json.dumps(result), flush=True)
        return 0 if result["ok"] else 1
    if args.smoke:
        args.layers, args.width, args.heads, args.kv_heads = SMOKE_LAYERS, 256, 4, 2
        args.intermediate, args.context, args.calibration, args.batch = 512, 16, 2, 2
        args.limit_mib, args.timeout = SMOKE_LIMIT_MIB, 120.0
        args.load_whole = True
    if not sys.platform.startswith("linux"):
        print("RLIMIT_DATA counts private mappings only on Linux (4.7 or later): skipped",
              flush=True)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="oneshot_memory.")) if args.workdir is None \
        else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "model"
    try:
        for path in workdir.iterdir():  # a workdir used before
            shutil.rmtree(path)
        start = time.perf_counter()
        size = build_model(source, args)
        limit = args.limit_mib * MIB
        print(f"Llama {args.layers} blocks, width {args.width}, MLP {args.intermediate}: "
              f"{size / MIB:.0f} MiB of fp32 weights, saved in "
              f"{time.perf_counter() - start:.1f} s; cap {args.limit_mib} MiB of data above "
              f"the child's baseline (RLIMIT_DATA); {args.method} {args.percent:g}% on "
              f"{args.calibration} x {args.context} tokens, {args.threads} thread(s)",
              flush=True)
        plan = [(f"block by block, {_malloc(args.mmap_threshold)}", "prune",
                 args.mmap_threshold, True)]
        if args.default_malloc and args.mmap_threshold:
            plan.append((f"block by block, {_malloc(0)}", "prune", 0, True))
        if args.uncapped:
            plan.append((f"block by block, no cap, {_malloc(0)}", "prune", 0, False))
        if args.load_whole:
            plan.append(("whole checkpoint read into memory", "load", args.mmap_threshold,
                         True))
        runs = []
        for i, (name, task, threshold, capped) in enumerate(plan):
            result = run_child(task, source, workdir / f"out{i}", args, threshold, capped)
            runs.append((name, result))
            print(f"{name}: {'ok' if result['ok'] else 'FAILED'}", flush=True)
        from admmprune.tables import format_table

        print(format_table(["run", "result", "s", "base data MiB", "peak data +MiB",
                            "peak anon RSS +MiB", "base RSS MiB", "peak RSS MiB"],
                           [_row(name, r) for name, r in runs]), flush=True)
        for name, r in runs:
            if "error" in r:
                print(f"{name}: {r['error']}", flush=True)
        pruned = runs[0][1]
        if pruned["ok"]:
            print(f"kept {pruned['kept']} of {pruned['pruned_total']} block weights "
                  f"({100 * pruned['kept'] / pruned['pruned_total']:.1f}%)", flush=True)
        ratio = size / limit
        met = pruned["ok"] and ratio >= TARGET
        print(f"model / cap = {size / MIB:.0f} MiB / {limit / MIB:.0f} MiB = {ratio:.2f}: "
              f"{'meets' if met else 'MISSES'} the target (pruned under a cap >= {TARGET:g}x "
              "smaller than the model)", flush=True)
        if args.load_whole:
            binds = not runs[-1][1]["ok"]
            print(f"the cap {'binds' if binds else 'DOES NOT bind'}: reading the whole "
                  f"checkpoint under it {'fails' if binds else 'succeeds'}", flush=True)
        return 0 if pruned["ok"] else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # a timeout keeps every line printed
    sys.exit(main())
