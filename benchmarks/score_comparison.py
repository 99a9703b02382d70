"""Which score ranks weights fairly across BatchNorm layers: magnitude, LAMP, rms, folded
(|w| with the neighbouring norms' scales folded in), share (|w|·rms(input)/rms(output)) and
obd (w² times the output Gauss-Newton diagonal), each under global ADMM and under one-shot
global pruning with the same retraining, from a converged dense model per seed.

For each network and seed it trains the dense model in full epochs (`admmprune train`, unless
OUT/dense-NET-sSEED/dense.pt exists), checks that its last epoch gained less than 1%, then runs
`admmprune compare` at every ratio from it (OUT/bn-NET-sSEED, OUT/bn-NET-mnist-sSEED on MNIST;
finished runs are reused). The table gives each score's mean test accuracy over the seeds, the
layers it collapses (no weight, or weights in fewer than half of the output rows) and the
targets of the default candidate.

    python benchmarks/score_comparison.py --nets resnet_bn,mobilenet_bn --percents 95,90,98 \\
        --seeds 0,1 --out runs
    python benchmarks/score_comparison.py --dataset mnist --out runs   # the same on MNIST
    python benchmarks/score_comparison.py --report-only --out runs    # the table of finished runs
    python benchmarks/score_comparison.py --smoke                       # synthetic data, seconds

With ``--lm MODEL_DIR ...`` it asks the same question of transformers instead, where the
norms precede the layers (LayerNorm, RMSNorm): one-shot global pruning of Hugging Face causal
LMs by each score, test bits per byte on the pystdlib test windows, no retraining.

    python benchmarks/score_comparison.py --lm models/gpt-pystdlib models/llama-pystdlib \
        --percents 50,70 --test-windows 1024
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from admmprune.masks import LayerSparsity, collapsed_layers
from admmprune.tables import format_table

# score -> (its global ADMM method, its one-shot method) in `admmprune compare`
SCORES = {"magnitude": ("admm", "magnitude"), "lamp": ("lamp", "lamp-oneshot"),
          "rms": ("rms", "rms-oneshot"), "folded": ("folded", "folded-oneshot"),
          "share": ("share", "share-oneshot"), "obd": ("obd", "obd-oneshot")}
FAMILIES = ("ADMM", "one-shot")
CONVERGED_GAIN = 0.01  # a dense model whose last epoch gained less than this is converged


DATASETS = {"fashion": "", "mnist": "-mnist"}  # --dataset -> the run directories' suffix


def recipe(net: str, dataset: str) -> str:
    return f"recipes/{net}_{dataset}.yaml"


def tag(net: str, dataset: str) -> str:
    """The network's name in run directories (Fashion-MNIST's keep their first names)."""
    return net + DATASETS[dataset]


def run(command: list[str], threads: int) -> None:
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def train_dense(net: str, seed: int, out: Path, args: argparse.Namespace) -> Path:
    run_dir = out / f"dense-{tag(net, args.dataset)}-s{seed}"
    if not (run_dir / "dense.pt").is_file():
        run([sys.executable, "-m", "admmprune", "train", recipe(net, args.dataset),
             "--steps-per-epoch", "null",
             "--seed", str(seed), "--threads", "1", "--no-progress", "--run-dir", str(run_dir),
             *args.train_extra], args.threads)
    return run_dir


def dense_curve(run_dir: Path) -> list[float]:
    """Test accuracy after each dense epoch."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["test_accuracy"] for r in map(json.loads, lines)
            if r.get("phase") == "dense" and "test_accuracy" in r]


def run_compare(net: str, seed: int, percent: str, dense: Path, out: Path,
                args: argparse.Namespace) -> None:
    methods = ["dense"] + [m for score in args.scores for m in SCORES[score]]
    run([sys.executable, "-m", "admmprune", "compare", recipe(net, args.dataset), "--pretrained",
         str(dense / "dense.pt"), "--dense-epochs", "0", "--methods", ",".join(methods),
         "--all-percent", percent, "--seeds", str(seed), "--threads", "1", "--no-progress",
         "--out", str(out / f"bn-{tag(net, args.dataset)}-s{seed}"), *args.compare_extra],
        args.threads)


def collapse_of(summary: dict) -> tuple[int, float]:
    """(layers collapsing, smallest share of output rows that keep a weight) of a run."""
    report = [LayerSparsity.from_dict(r) for r in summary["layers"]]
    shares = [r.open_rows / r.rows for r in report if r.rows]
    return len(collapsed_layers(report)), min(shares) if shares else float("nan")


def gather(out: Path, nets: list[str], seeds: list[int], dataset: str = "fashion") -> dict:
    """{(net, percent, method): [(accuracy %, collapsed, min open share) per seed]} from the
    finished runs of each compare (METHOD-seedS-pP/summary.json), finished or not."""
    cells: dict[tuple, list[tuple[float, int, float]]] = {}
    for net in nets:
        for seed in seeds:
            runs = out / f"bn-{tag(net, dataset)}-s{seed}"
            for path in sorted(runs.glob("*-seed*-p*/summary.json")):
                method, _, rest = path.parent.name.rpartition("-seed")
                summary = json.loads(path.read_text())
                if summary.get("pruned_accuracy") is None:
                    continue
                collapsed, share = collapse_of(summary)
                key = (net, f"{float(rest.rpartition('-p')[2]):g}", method)
                cells.setdefault(key, []).append((100 * summary["pruned_accuracy"], collapsed,
                                                  share))
    return cells


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def report(cells: dict, nets: list[str], percents: list[str], scores: list[str], default: str,
           seeds: int) -> list[str]:
    """The table per network and family, then the default's targets; returns its lines."""
    lines = []
    for net in nets:
        for family, index in zip(FAMILIES, (0, 1), strict=True):
            rows = []
            for score in scores:
                method = SCORES[score][index]
                row = [f"{score} ({method})"]
                for percent in percents:
                    got = cells.get((net, percent, method), [])
                    if not got:
                        row.append("-")
                        continue
                    acc = _mean([a for a, _, _ in got])
                    collapsed = max(c for _, c, _ in got)
                    share = min(s for _, _, s in got)
                    row.append(f"{acc:.2f} [{len(got)}] c{collapsed} o{share:.2f}")
                rows.append(row)
            lines.append(f"\n{net}, {family}: mean test accuracy % [seeds] c<layers "
                         "collapsing, worst seed> o<smallest share of open output rows>")
            lines.append(format_table(["score", *[f"{p}%" for p in percents]], rows))
    lines.append("")
    lines += targets(cells, nets, percents, scores, default, seeds)
    for line in lines:
        print(line, flush=True)
    return lines


def targets(cells: dict, nets: list[str], percents: list[str], scores: list[str],
            default: str, seeds: int) -> list[str]:
    """Issue 33's targets for ``default``: open rows at 90/95, within 0.3 points of the best
    score everywhere, 5 points ahead of magnitude at 95 (on BatchNorm networks)."""
    out, met, total = [], 0, 0
    for net in nets:
        for family, index in zip(FAMILIES, (0, 1), strict=True):
            for percent in percents:
                means = {s: _mean([a for a, _, _ in cells.get((net, percent, SCORES[s][index]),
                                                               [])]) for s in scores}
                got = cells.get((net, percent, SCORES[default][index]), [])
                if len(got) < seeds or any(v != v for v in means.values()):
                    continue  # not every seed and score has run
                best = max(means, key=lambda s: means[s])
                checks = [(f"within 0.3 of the best ({best} {means[best]:.2f})",
                           means[default] >= means[best] - 0.3)]
                if float(percent) <= 95:
                    checks.append(("every layer keeps weights in half its rows",
                                   min(s for _, _, s in got) >= 0.5))
                if float(percent) == 95 and "magnitude" in means:
                    checks.append((f"+5 over magnitude ({means['magnitude']:.2f})",
                                   means[default] >= means["magnitude"] + 5))
                for what, ok in checks:
                    total += 1
                    met += ok
                    out.append(f"{net} {family} {percent}%: {default} {means[default]:.2f}: "
                               f"{what}: {'met' if ok else 'MISSED'}")
    out.append(f"{default}: {met} of {total} targets met")
    return out


def dense_lines(out: Path, nets: list[str], seeds: list[int], dataset: str = "fashion"
                ) -> list[str]:
    lines = []
    for net in nets:
        for seed in seeds:
            run_dir = out / f"dense-{tag(net, dataset)}-s{seed}"
            if not (run_dir / "metrics.jsonl").is_file():
                continue
            curve = dense_curve(run_dir)
            gain = (curve[-1] - curve[-2]) / curve[-2] if len(curve) > 1 else float("nan")
            state = "converged" if gain < CONVERGED_GAIN else "NOT converged"
            lines.append(f"dense {net} seed {seed}: test accuracy per epoch "
                         f"{', '.join(f'{100 * a:.2f}' for a in curve)}; last gain "
                         f"{100 * gain:.2f}% ({state})")
    for line in lines:
        print(line, flush=True)
    return lines


def lm_scores(model_dirs: list[str], percents: list[str], scores: list[str],
              data_dir: str | None, test_windows: int) -> list[dict]:
    """One-shot global hard prune of each causal LM by each score; test bpb, no retraining."""
    import copy
    import warnings

    from admmprune import ADMMPruner
    from admmprune.masks import CollapseWarning
    from admmprune.runs.oneshot import load_causal_lm, test_bpb, text_calibration

    records = []
    for model_dir in model_dirs:
        dense = load_causal_lm(model_dir)
        context = dense.config.max_position_embeddings if hasattr(
            dense.config, "max_position_embeddings") else dense.config.n_positions
        batches, test = text_calibration(data_dir, context, 2, 2, 0, test_windows)
        example = batches[0][0] if isinstance(batches[0], (tuple, list)) else batches[0]
        print(f"{model_dir}: dense bpb {test_bpb(dense, test):.4f}", flush=True)
        for percent in percents:
            for score in scores:
                model = copy.deepcopy(dense)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CollapseWarning)  # counted below
                    report = ADMMPruner(model, float(percent), score=score,
                                        example_inputs=example[:1]).hard_prune()
                bpb = test_bpb(model, test)
                record = {"model": model_dir, "percent": float(percent), "score": score,
                          "bpb": bpb, "collapsed": len(collapsed_layers(report)),
                          "kept": {r.name: r.kept_fraction for r in report}}
                records.append(record)
                print(f"{model_dir} {percent}% {score}: bpb {bpb:.4f}, "
                      f"{record['collapsed']} layers collapsing", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default="resnet_bn,mobilenet_bn")
    parser.add_argument("--percents", default="95,90,98")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="fashion",
                        help="Fashion-MNIST or MNIST (recipes/NET_DATASET.yaml)")
    parser.add_argument("--scores", default="magnitude,lamp,rms,folded,share,obd")
    parser.add_argument("--default", default="folded", help="the score whose targets are checked")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--lm", nargs="*", metavar="MODEL_DIR",
                        help="one-shot global pruning of these causal LMs by each score "
                        "(with --smoke and no directory: a tiny Llama)")
    parser.add_argument("--data-dir", help="--lm: the text corpus [default: "
                        "$ADMMPRUNE_DATA_DIR/pystdlib]")
    parser.add_argument("--test-windows", type=int, default=1024)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    args.train_extra, args.compare_extra = [], []
    nets, seeds = args.nets.split(","), [int(s) for s in args.seeds.split(",")]
    percents, args.scores = args.percents.split(","), args.scores.split(",")
    repo = Path(__file__).resolve().parent.parent
    if args.lm is not None:
        if args.smoke:  # the post-training grid's tiny Llama and corpus
            sys.path.insert(0, str(repo / "benchmarks"))
            from oneshot_grid import smoke_model

            model, corpus = smoke_model(Path(tempfile.mkdtemp(prefix="score-lm-")))
            args.lm, args.data_dir, args.test_windows, percents = [model], corpus, 4, ["50"]
        if not args.lm:
            parser.error("--lm needs model directories (or --smoke)")
        records = lm_scores(args.lm, percents, args.scores, args.data_dir, args.test_windows)
        if args.out and not args.smoke:
            args.out.mkdir(parents=True, exist_ok=True)
            with open(args.out / "lm_scores.jsonl", "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        return 0
    os.chdir(repo)  # the recipes' paths
    if args.smoke:
        nets, seeds, percents = ["resnet_bn"], [0], ["90"]
        args.scores = ["magnitude", "folded", "share", "obd"]
        args.out = Path(tempfile.mkdtemp(prefix="score-smoke-"))
        data = ["--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32",
                "--model-args", "{width: 4}"]
        args.train_extra = [*data, "--dense-epochs", "2"]
        args.compare_extra = [*data, "--steps-per-epoch", "2", "--k-step", "1",
                              "--retraining-epochs", "1"]
    if not args.report_only:
        for net in nets:
            for seed in seeds:
                dense = train_dense(net, seed, args.out, args)
                for percent in percents:
                    run_compare(net, seed, percent, dense, args.out, args)
                    print(f"{net} seed {seed} {percent}%: done", flush=True)
    dense_lines(args.out, nets, seeds, args.dataset)
    report(gather(args.out, nets, seeds, args.dataset), nets, percents, args.scores,
           args.default, len(seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
