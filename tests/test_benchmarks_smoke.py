"""Every script in benchmarks/ runs in a tiny form (seconds), so a change of recipe or API
cannot break one silently.

Each runs as its own process, the way a user runs it, and is stopped with ``os._exit`` as
soon as it returns: what it printed must already be on the pipe (a benchmark killed by a
timeout keeps what it measured), so every benchmark flushes its output as it goes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

# Run the script as __main__, then leave without flushing Python's buffers (a kill).
KILLED_AT_THE_END = """
import os, runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
try:
    runpy.run_path(script, run_name="__main__")
    code = 0
except SystemExit as exit:
    code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
except BaseException:
    import traceback
    traceback.print_exc()
    code = 1
os._exit(code)
"""

# script -> (tiny arguments, text its output must hold)
SMOKE = {
    "alexnet.py": (["--image-size", "67", "--fc-width", "32", "--classes", "10", "--repeats",
                    "1", "--steps", "1", "--batch", "2", "--images", "4"],
                   ["admm_step", "W-step / plain", "loading alone"]),
    "callbacks.py": (["--steps", "2", "--repeats", "1", "--batch", "8"],
                     ["callback W-step / plain step", "gradient"]),
    "distributed.py": (["--train-subset", "256", "--iterations", "1", "--worlds", "1",
                        "--batch-size", "64"], ["W-step img/s"]),
    "inference.py": (["--repeats", "1", "--alexnet-percents", "90", "--alexnet-image-size",
                      "67", "--alexnet-fc-width", "32", "--batch", "4"],
                     ["LeNet-5 random, 250x", "AlexNet random, 90%", "speed-up"]),
    "layer_solvers.py": (["--smoke"], ["admm / sparsegpt", "spectrum 16x32 70%",
                                       "mixing 16x32 2:4"]),
    "lenet5_mnist.py": (["--set", "train_subset=256", "--set", "test_subset=128",
                         "--set", "dense_epochs=1", "--set", "k_step=1",
                         "--set", "retraining_epochs=1", "--set", "steps_per_epoch=2",
                         "--warmup-steps", "2", "--steps", "2", "--overhead-epochs", "1",
                         "--threads", "1"],
                        ["W-step / plain", "compression N/K"]),
    "llmcompressor_check.py": (["--smoke"], [
        "sparsegpt 50: bpb ours", "sparsegpt nm2:4: bpb ours", "time ratio", "bpb previous",
        "no worse than the previous whole-model sequential path in",
        "smoke: both sides agree (bpb bit for bit, every layer within one weight)"]),
    "oneshot_depth.py": (["--smoke"], ["depth 4:", "s/block at 4 blocks / at 2 blocks"]),
    "oneshot_grid.py": (["--smoke"], ["tiny-llama 50 admm:global seed 0: bpb",
                                      "admm:uniform", "x)",
                                      "allocation-50.png", "tiny-llama seed 0: ",
                                      "targets met"]),
    "oneshot_memory.py": (["--smoke"], ["block by block, MALLOC_MMAP_THRESHOLD_=131072: ok",
                                        "the cap binds", "model / cap = "]),
    "penalty_form.py": (["--models", "alexnet,lenet5", "--steps", "1", "--batch", "2",
                         "--alexnet-width", "16"], ["fused / plain", "gradient / plain"]),
    "projection.py": (["--sizes", "10K", "--repeats", "1"], ["10K with 1 thread(s)"]),
    "score_comparison.py": (["--smoke"], ["resnet_bn seed 0 90%: done",
                                          "dense resnet_bn seed 0: test accuracy per epoch",
                                          "folded (folded-oneshot)",
                                          "share (share-oneshot)", "obd (obd-oneshot)",
                                          "targets met"]),
    "sparse_decoding.py": (["--smoke"], ["compiled sparse kernels: available",
                                         "llama-64 1 thread(s) unstructured 90%: decode",
                                         "structured uneven 25% kept: decode",
                                         "traffic limit", "cases slower than dense"]),
    "structured.py": (["--percents", "50", "--repeats", "1", "--alexnet-image-size", "67",
                       "--alexnet-fc-width", "32", "--batch", "4"],
                      ["LeNet-5 50%", "AlexNet"]),
    "threads.py": (["--seconds", "0.1", "--repeats", "1", "--warmup", "1", "--competitors", "0",
                    "--configs", "1 thread"], ["quiet steps/s"]),
    "torch_pruning_units.py": (["--smoke"], [
        "llama-smoke magnitude   50% seed 0: dense", "llama-smoke taylor      50% seed 0: dense",
        "gpt-smoke magnitude   50% seed 0: dense", "gpt-smoke taylor      50% seed 0: dense",
        "maskdiff"]),
    "yolov4.py": (["--model", "yolov4-tiny", "--size", "64", "--repeats", "1", "--steps", "1",
                   "--batch", "1", "--boxes", "1"], ["admm_step", "W-step / plain"]),
}
# second smoke runs of scripts with two modes: (script, arguments, expected)
SECOND_MODES = [("score_comparison.py", ["--smoke", "--lm"],
                 ["dense bpb", "50% folded: bpb", "layers collapsing"])]
# imported or started by the benchmarks, not run alone
HELPERS = {"steptiming.py", "llmcompressor_worker.py"}


def test_every_benchmark_has_a_smoke_run():
    scripts = {p.name for p in (REPO / "benchmarks").glob("*.py")}
    assert scripts - HELPERS == set(SMOKE)


RUNS = [(script, *SMOKE[script]) for script in sorted(SMOKE)] + SECOND_MODES


@pytest.mark.parametrize(("script", "arguments", "expected"), RUNS,
                         ids=[" ".join([run[0], *run[1]]) for run in RUNS])
def test_benchmark_runs_tiny_and_flushes_what_it_measured(script, arguments, expected, tmp_path,
                                                          request):
    if script in ("distributed.py", "lenet5_mnist.py"):  # real MNIST, a slice of it
        arguments = [*arguments, "--data-dir", str(request.getfixturevalue("mnist_dir"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTHONUNBUFFERED", None)  # a pipe is block-buffered unless the script flushes
    result = subprocess.run(
        [sys.executable, "-c", KILLED_AT_THE_END, str(REPO / "benchmarks" / script),
         *arguments], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    for text in expected:
        assert text in result.stdout, f"{script}: {text!r} missing from\n{result.stdout}"
