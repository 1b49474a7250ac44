"""model/README.md: the model card, in the Hugging Face format (YAML metadata, then Markdown), written by
`train` from what the run measured: a model that leaves the run folder keeps what it is, what it was
trained on, how well it did and how to load it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from .report import scalar_metrics


def _number(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(task: Any, cfg: Any, report: dict, data_report: dict, base_model: str) -> str:
    """The card's text. `base_model` is what the run fine-tuned (a Hub name, or a local folder's name)."""
    local = Path(base_model).expanduser().exists()
    meta: dict[str, Any] = {"library_name": "transformers", "tags": ["tunesmith", task.name]}
    if task.hub_pipeline_tag:
        meta["pipeline_tag"] = task.hub_pipeline_tag
    if not local and "(embedded" not in base_model:
        meta["base_model"] = base_model
    base = Path(base_model).name if local else base_model
    train = report.get("train", {})
    splits = data_report.get("splits", {})
    labels = task.summary().get("labels")
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {task.name} model fine-tuned from {base}", "",
        f"Fine-tuned with [tunesmith](https://pypi.org/project/tunesmith/) {__version__}: "
        f"{task.headline()}.", "",
        "## Results", "",
        "| metric | validation (best checkpoint) | test |", "|---|---|---|",
    ]
    val, test = scalar_metrics(report.get("validation")), scalar_metrics(report.get("test"))
    for name in dict.fromkeys([*val, *test]):
        lines.append(f"| {name} | {_number(val.get(name, '-'))} | {_number(test.get(name, '-'))} |")
    lines += ["", "## Training data", "", "| split | file | rows |", "|---|---|---|"]
    for split, info in splits.items():
        info = info or {}
        source = Path(info["source"]).name if info.get("source") else info.get("made") or "-"
        lines.append(f"| {split} | {source} | {info.get('rows')} |")
    if labels:
        lines += ["", f"Labels ({len(labels)}): " + ", ".join(f"`{lb}`" for lb in labels[:50])
                  + (f", and {len(labels) - 50} more" if len(labels) > 50 else "")]
    t = cfg.train
    lines += ["", "## Training", "",
              f"- base model: {base}",
              f"- method: {'LoRA ' + json.dumps(train.get('lora')) if train.get('lora') else 'full fine-tuning'}",
              f"- steps: {train.get('steps')} ({train.get('epochs_completed')} epochs), batch size {t.batch_size}, "
              f"learning rate {t.lr}, precision {train.get('precision')}, seed {t.seed}",
              f"- best checkpoint: step {train.get('best_step')} by validation {train.get('metric')}",
              f"- max_length: {cfg.model.max_length} tokens",
              "", "The run folder's config.yaml holds every setting; report.json and report.html every measurement.",
              "", "## How to load", "", "```python"]
    if task.hub_pipeline_tag:
        lines += ["from transformers import pipeline", "",
                  f'model = pipeline("{task.hub_pipeline_tag}", model="path/to/this/folder")']
    lines += ["import tunesmith  # the same predictions as training reported, with the task's own decoding", "",
              'predictor = tunesmith.load("path/to/this/folder")', "```", "",
              "## Limitations", "",
              f"- Measured on this run's own test split only ({(splits.get('test') or {}).get('rows')} rows); "
              "other data can score differently.",
              f"- Inputs longer than {cfg.model.max_length} tokens are "
              + ("split into overlapping windows." if task.long_inputs == "window" else "truncated."),
              "- It learned whatever biases its training data holds."]
    warnings = report.get("warnings") or []
    if warnings:
        lines += ["", "Warnings of the run:", "", *[f"- {w}" for w in warnings]]
    return "\n".join(lines) + "\n"
