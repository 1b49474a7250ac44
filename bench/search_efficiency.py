#!/usr/bin/env python
"""Search efficiency on TREC coarse (6 classes) with the embedded MiniLM: tunesmith's 12-point grid,
tunesmith's bayes + hyperband pruning with 12 trials, and `transformers.Trainer.hyperparameter_search`
(optuna backend, the same TPE sampler and hyperband pruner) with the same space and 12 trials.

For each: the best validation accuracy, the test accuracy of its best config (retrained once), the
training compute (samples trained, pruned trials' partial epochs included) and the search's wall time.
Validation is a stratified 10% of train_5452 (seed 0); test is test_500. tunesmith evaluates every
quarter epoch (train.eval_every 0.25, hyperband's min_resource 25%), the grid too; the Trainer evaluates
at each epoch's end (its recipe; its pruner sees global steps).

One bayes run is one draw of the search seed. Training is seeded and deterministic, so a bayes trial
with a grid point's values reports exactly the grid trial's validation curve: `--replay-seeds N` replays
the grid's recorded curves through tunesmith's own search code (sampler, pruner, reuse of repeated
points) for search seeds 0..N-1, which gives the distribution of compute and best score over seeds
without training. Seed 0's replay is checked against the real bayes run when both ran. See
bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import csv
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task_vs_trainer as tvt  # noqa: E402  (sets HF_HUB_OFFLINE before any Hugging Face import)

import datasets  # noqa: E402
import numpy as np  # noqa: E402
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,  # noqa: E402
                          Trainer, TrainerCallback, TrainingArguments, set_seed)

cvt = tvt.cvt
SPACE = {"lr": [2e-5, 5e-5, 1e-4], "epochs": [1, 2], "batch_size": [16, 32]}
TRIALS = 12
MAX_LENGTH = 64
EVAL_EVERY = 0.25  # of an epoch (tunesmith)
EVAL_BATCH = 64
WARMUP_RATIO, WEIGHT_DECAY = 0.06, 0.01


def load_trec(root: Path) -> dict[str, list[tuple[str, str]]]:
    """{split: [(text, coarse label)]}: validation is a stratified 10% of train_5452 (seed 0)."""
    from sklearn.model_selection import train_test_split

    def read(name: str) -> list[tuple[str, str]]:
        with open(root / "trec" / name, encoding="utf-8", newline="") as f:
            return [(r["text"], r["coarse_label"]) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]

    rows = read("train_5452.tsv")
    train, validation = train_test_split(rows, test_size=0.1, random_state=0, stratify=[r[1] for r in rows])
    return {"train": train, "validation": validation, "test": read("test_500.tsv")}


# ---------------------------------------------------------------- tunesmith

def tunesmith_search(data: dict[str, list[tuple[str, str]]], tmp: Path, method: str, pruner: str, seed: int,
                     precision: str) -> dict[str, Any]:
    import tunesmith

    paths = {}
    for split, rows in data.items():
        paths[split] = tmp / f"{split}.csv"
        with open(paths[split], "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows)
    config = {
        "task": "text-classification",
        "model": {"max_length": MAX_LENGTH},
        "data": {**{k: str(v) for k, v in paths.items()}, "cache_dir": str(tmp / "cache")},
        "train": {"precision": precision, "seed": seed, "warmup_ratio": WARMUP_RATIO, "weight_decay": WEIGHT_DECAY,
                  "eval_every": EVAL_EVERY},
        "eval": {"batch_size": EVAL_BATCH, "metric": "accuracy"},
        "output_dir": str(tmp / f"study-{method}"),
        "search": {"method": method, "pruner": pruner, "seed": seed, "min_resource": round(100 * EVAL_EVERY),
                   **({} if method == "grid" else {"trials": TRIALS}),
                   "space": _space()},
    }
    start = time.perf_counter()
    result = tunesmith.search(config)
    wall = time.perf_counter() - start
    best = result.best
    final = tunesmith.train(result.dir / "best_config.yaml", overwrite=True)
    s = result.summary
    curves = {_key(t.params): {"steps": sorted(t.intermediate_values), "values": [
        t.intermediate_values[k] for k in sorted(t.intermediate_values)]} for t in _study(result.dir).trials
        if t.user_attrs.get("same_as_trial") is None and t.intermediate_values}
    return {"side": f"tunesmith {method}" + (f" + {pruner}" if pruner != "none" else ""),
            "best_validation_accuracy": 100 * best["accuracy"],
            "best": {k: best[f"train.{k}"] for k in SPACE},
            "test_accuracy_of_best": 100 * final.report["test"]["accuracy"],
            "samples_trained": s["samples_trained"], "search_wall_s": wall, "trials": s["trials"],
            "trained": sum(r["samples"] is not None for r in s["leaderboard"]),
            "sequence": _sequence(s),
            "curves": curves, "n_train": len(data["train"])}


def _sequence(summary: dict[str, Any]) -> list[list]:
    """(trial, state, samples) in trial order: what a replay must reproduce."""
    return [[r["trial"], r["state"], r["samples"]] for r in sorted(summary["leaderboard"], key=lambda r: r["trial"])]


def _key(params: dict[str, Any]) -> str:
    return "|".join(f"{params[f'train.{k}']:g}" for k in SPACE)


def _study(study_dir: Path) -> Any:
    import optuna

    from tunesmith.hpsearch import STUDY_DB

    url = f"sqlite:///{study_dir / STUDY_DB}"
    return optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)


# ---------------------------------------------------------------- replay over search seeds

def replay(curves: dict[str, dict], n_train: int, seeds: range, tmp: Path, precision: str) -> list[dict]:
    """Bayes + hyperband over search seeds, with `tunesmith.run.train` replaced by the grid's recorded
    curves: everything else (TPE, the pruner, the reuse of repeated points, the budget) is the real code.
    Samples of a trial: the epochs it reached times the training set."""
    import types

    import tunesmith
    import tunesmith.run
    from tunesmith.training.loop import Event

    def replayed_train(base: Any, overrides: dict[str, Any], callbacks: Any = ()) -> Any:
        c = curves[_key(overrides)]
        best = -1.0
        for step, value in zip(c["steps"], c["values"]):
            best = max(best, value)
            report = {"train": {"samples": round(step / 100 * n_train)}, "validation": {"accuracy": best}}
            for cb in callbacks:
                control = cb(Event("eval", None, {"metrics": {"accuracy": value}, "epochs": step / 100}))
                if control is not None and control.prune:  # a pruned run returns its report, as run.train does
                    return types.SimpleNamespace(report={**report, "status": "pruned",
                                                         "reason": f"pruned at {step}%"})
        return types.SimpleNamespace(report={**report, "status": "completed"})

    csv_path = tmp / "replay.csv"
    csv_path.write_text("text,label\na,x\nb,y\n")  # never read for training: train() is replaced
    real_train, tunesmith.run.train = tunesmith.run.train, replayed_train
    out = []
    try:
        for seed in seeds:
            config = {"task": "text-classification", "data": {"train": str(csv_path), "validation": str(csv_path)},
                      "train": {"precision": precision, "eval_every": EVAL_EVERY}, "eval": {"metric": "accuracy"},
                      "output_dir": str(tmp / f"replay-{seed}" / "study-bayes"),  # the study name sets the brackets
                      "search": {"method": "bayes", "pruner": "hyperband", "seed": seed,
                                 "min_resource": round(100 * EVAL_EVERY), "trials": TRIALS, "space": _space()}}
            s = tunesmith.search(config).summary
            out.append({"seed": seed, "samples_trained": s["samples_trained"],
                        "best_validation_accuracy": 100 * s["best"]["accuracy"],
                        "sequence": _sequence(s)})
    finally:
        tunesmith.run.train = real_train
    return out


def _space() -> dict[str, Any]:
    return {"train.lr": {"choice": SPACE["lr"]}, "train.epochs": {"choice": SPACE["epochs"]},
            "train.batch_size": {"choice": SPACE["batch_size"]}}


# ---------------------------------------------------------------- the Trainer

class TrialSamples(TrainerCallback):
    """Training samples over every trial: each trial's epochs trained (`state.epoch`, fractional, where
    it ended or was pruned) times the training set."""

    def __init__(self, n_train: int) -> None:
        self.n_train, self.done, self.current = n_train, 0.0, 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.done, self.current = self.done + self.current, 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.current = state.epoch

    @property
    def samples(self) -> int:
        return round((self.done + self.current) * self.n_train)


def trainer_search(data: dict[str, list[tuple[str, str]]], tmp: Path, seed: int) -> dict[str, Any]:
    import optuna

    labels = sorted({y for _, y in data["train"]})
    label2id = {y: i for i, y in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(cvt.model_path())

    def encode(rows: list[tuple[str, str]]) -> datasets.Dataset:
        enc = tokenizer([x for x, _ in rows], max_length=MAX_LENGTH, truncation=True)
        return datasets.Dataset.from_dict({**enc, "labels": [label2id[y] for _, y in rows]})

    train, validation, test = (encode(data[k]) for k in ("train", "validation", "test"))

    def model_init(trial: Any = None) -> Any:
        return AutoModelForSequenceClassification.from_pretrained(
            cvt.model_path(), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    def accuracy(p: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(p.predictions, axis=-1) == p.label_ids).mean())}

    def args(**hp: Any) -> TrainingArguments:
        return TrainingArguments(output_dir=str(tmp / "trainer"), per_device_eval_batch_size=EVAL_BATCH,
                                 warmup_steps=WARMUP_RATIO, weight_decay=WEIGHT_DECAY, seed=seed,
                                 eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True,
                                 dataloader_num_workers=0, **hp)

    counter = TrialSamples(len(train))
    set_seed(seed)
    trainer = Trainer(model_init=model_init, args=args(), train_dataset=train, eval_dataset=validation,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
                      callbacks=[counter])

    def hp_space(trial: Any) -> dict[str, Any]:
        return {"learning_rate": trial.suggest_categorical("learning_rate", SPACE["lr"]),
                "num_train_epochs": trial.suggest_categorical("num_train_epochs", SPACE["epochs"]),
                "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size",
                                                                         SPACE["batch_size"])}

    start = time.perf_counter()
    best = trainer.hyperparameter_search(
        direction="maximize", backend="optuna", hp_space=hp_space, n_trials=TRIALS,
        compute_objective=lambda m: m["eval_accuracy"],
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3), pruner=optuna.pruners.HyperbandPruner(),
        storage=f"sqlite:///{tmp / 'trainer.db'}", study_name="trainer")
    wall = time.perf_counter() - start
    samples = counter.samples  # before the final retraining adds to it
    trials = optuna.load_study(study_name="trainer", storage=f"sqlite:///{tmp / 'trainer.db'}").trials
    states = {k: sum(t.state.name.lower() == k for t in trials) for k in ("complete", "pruned", "fail")}
    hp = best.hyperparameters
    set_seed(seed)
    final = Trainer(model_init=model_init, args=args(**hp), train_dataset=train, eval_dataset=validation,
                    data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    final.train()
    test_acc = final.evaluate(test, metric_key_prefix="test")["test_accuracy"]
    return {"side": "Trainer.hyperparameter_search (optuna TPE + hyperband)",
            "best_validation_accuracy": 100 * best.objective,
            "best": {"lr": hp["learning_rate"], "epochs": hp["num_train_epochs"],
                     "batch_size": hp["per_device_train_batch_size"]},
            "test_accuracy_of_best": 100 * test_acc, "samples_trained": samples, "search_wall_s": wall,
            "trials": {"completed": states["complete"], "pruned": states["pruned"], "failed": states["fail"]},
            "trained": len(trials)}


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=tvt.DEFAULT_DATA_ROOT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--runs", default="grid,bayes,trainer", help="which of grid, bayes, trainer (default: all)")
    p.add_argument("--replay-seeds", type=int, default=20,
                   help="replay bayes over search seeds 0..N-1 on the grid's curves (0: no replay)")
    p.add_argument("--curves", type=Path, default=None,
                   help="an earlier run's JSON (or {'curves', 'n_train'}) to replay instead of this run's grid")
    p.add_argument("--out", type=Path, default=tvt.REPO_ROOT / "bench/results/search_efficiency.json")
    args = p.parse_args(argv)
    tvt.quiet_libraries()
    data = load_trec(args.data_root)
    facts = tvt.machine_facts()
    tvt.console.print(f"TREC coarse: train {len(data['train'])}, validation {len(data['validation'])}, test "
                      f"{len(data['test'])}; space lr {SPACE['lr']} x epochs {SPACE['epochs']} x batch "
                      f"{SPACE['batch_size']}; {facts['cpu_model']}, torch threads {facts['torch_threads']}, "
                      f"precision {args.precision}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for run in [r for r in args.runs.split(",") if r]:
            if run == "trainer":
                results.append(trainer_search(data, Path(tmp), args.seed))
            else:
                results.append(tunesmith_search(data, Path(tmp), run, "hyperband" if run == "bayes" else "none",
                                                args.seed, args.precision))
            tvt.console.print(results[-1])
    grid = next((r for r in results if r["side"] == "tunesmith grid"), None)
    table = ["| run | best val acc | test acc of best | best lr / epochs / batch | trials completed / pruned "
             "(trained) | samples trained | vs grid | search wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        share = f"{r['samples_trained'] / grid['samples_trained']:.2f}" if grid else "-"
        b, t = r["best"], r["trials"]
        table.append(f"| {r['side']} | {r['best_validation_accuracy']:.2f} | {r['test_accuracy_of_best']:.2f} | "
                     f"{b['lr']:g} / {b['epochs']} / {b['batch_size']} | {t['completed']} / {t['pruned']} "
                     f"({r['trained']}) | {r['samples_trained']:,} | {share} | {r['search_wall_s']:.0f} |")
    tvt.console.print("\n".join(table))
    replays = replay_summary(args, results, grid)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"argv": sys.argv, "machine": facts, "results": results, "replay": replays},
                                   indent=2))


def replay_summary(args: argparse.Namespace, results: list[dict], grid: dict | None) -> dict | None:
    """Replay bayes over search seeds on the grid's curves; print the distribution and check seed 0
    against the real bayes run."""
    if args.replay_seeds <= 0:
        return None
    source = grid
    if args.curves is not None:
        saved = json.loads(args.curves.read_text())
        source = next((r for r in saved.get("results", []) if r["side"] == "tunesmith grid"), saved)
    if source is None:
        tvt.console.print("no replay: it needs the grid's curves (run the grid, or pass --curves)")
        return None
    curves, n_train = source["curves"], source["n_train"]
    grid_best = 100 * max(max(c["values"]) for c in curves.values())
    grid_samples = round(sum(c["steps"][-1] / 100 for c in curves.values()) * n_train)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        runs = replay(curves, n_train, range(args.replay_seeds), Path(tmp), args.precision)
    real = next((r for r in results if r["side"].startswith("tunesmith bayes")), None)
    if real is not None:
        same = [x[:2] for x in real["sequence"]] == [x[:2] for x in runs[0]["sequence"]]
        tvt.console.print(f"replay of seed {args.seed}: the same trials and states as the real bayes run: {same}")
    share = np.array([r["samples_trained"] / grid_samples for r in runs])
    gap = np.array([grid_best - r["best_validation_accuracy"] for r in runs])
    out = {"seeds": args.replay_seeds, "grid_best": grid_best, "grid_samples": grid_samples,
           "share_mean": float(share.mean()), "share_median": float(np.median(share)),
           "share_min": float(share.min()), "share_max": float(share.max()),
           "seeds_within_half": int((share <= 0.5).sum()), "seeds_within_0.5_points": int((gap <= 0.5).sum()),
           "seeds_meeting_both": int(((share <= 0.5) & (gap <= 0.5)).sum()),
           "best_mean": float(np.mean([r["best_validation_accuracy"] for r in runs])), "runs": runs}
    tvt.console.print(
        f"replay over {out['seeds']} search seeds: compute vs grid mean {out['share_mean']:.3f}, median "
        f"{out['share_median']:.3f}, range {out['share_min']:.3f}-{out['share_max']:.3f}; <= 0.5 in "
        f"{out['seeds_within_half']}; best within 0.5 points of the grid's {grid_best:.2f} in "
        f"{out['seeds_within_0.5_points']}; both in {out['seeds_meeting_both']}; mean best {out['best_mean']:.2f}")
    return out


if __name__ == "__main__":
    main()
