"""One Predictor for Python, `tunesmith predict`, `tunesmith evaluate` and (later) the server."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import RunConfig
from ..data.prepare import Table, load_splits
from ..data.readers import is_missing, read_file
from ..errors import ConfigError, DataError
from ..evaluation.inference import run_inference
from ..io import atomic_write_jsonl, atomic_write_text
from ..tasks.base import Task, get_task


class Predictor:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, task: Task, cfg: RunConfig,
                 device: torch.device | None = None) -> None:
        self.model, self.tokenizer, self.task, self.cfg = model, tokenizer, task, cfg
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.task.preprocess_setup(tokenizer)

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None) -> "Predictor":
        """Load from a run folder or its `model/` folder (both hold everything prediction needs)."""
        from transformers import AutoTokenizer

        from ..run import STATE_FILE

        root = Path(run_dir)
        model_dir = root / "model" if (root / "model" / STATE_FILE).exists() else root
        if not (model_dir / STATE_FILE).exists():
            raise ConfigError(f"{root} is not a tunesmith run folder (no model/{STATE_FILE}); "
                              "has training finished?")
        saved = json.loads((model_dir / STATE_FILE).read_text())
        cfg = RunConfig.model_validate(saved["config"])
        task = get_task(cfg, saved["task"])
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = task.load_model(str(model_dir))
        return cls(model, tokenizer, task, cfg, torch.device(device) if device else None)

    def _table(self, texts: Sequence[str], pairs: Sequence[str] | None, source: str = "input") -> Table:
        return Table(text=[str(t) for t in texts], label=[], file=[source] * len(texts),
                     line=list(range(1, len(texts) + 1)), text_pair=[str(p) for p in pairs] if pairs else None)

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                batch_size: int | None = None) -> list[dict]:
        """Predictions in input order; batches are sorted by length internally for speed."""
        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts; wrap a single text in a list")
        if not texts:
            return []
        data = self.task.preprocess(self._table(texts, text_pairs), self.tokenizer)
        out = run_inference(self.model, self.task, data, batch_size or self.cfg.eval.batch_size, self.device,
                            with_labels=False)
        return self.task.postprocess(out.scores)

    def _read_inputs(self, path: Path) -> tuple[list[int], list[dict]]:
        col, pair_col = self.cfg.data.text_column, self.cfg.data.text_pair_column
        rows = read_file(path, header=self.cfg.data.header is not False, column_names=self.cfg.data.column_names)
        for line, row in rows:
            for c in (col, pair_col):
                if c is None:
                    continue
                if c not in row:
                    raise DataError(f"column '{c}' is missing (the model was trained with data.text_column="
                                    f"'{col}')", file=str(path), line=line, column=c)
                if is_missing(row[c]):
                    raise DataError("empty text: nothing to predict", file=str(path), line=line, column=c,
                                    hint="remove the row or fill it in")
        return [line for line, _ in rows], [r for _, r in rows]

    def predict_file(self, path: str | Path, output: str | Path, batch_size: int | None = None) -> int:
        """Predict every row of a data file; write JSONL (or CSV by extension) with inputs and outputs."""
        path, output = Path(path), Path(output)
        lines, rows = self._read_inputs(path)
        col, pair_col = self.cfg.data.text_column, self.cfg.data.text_pair_column
        preds = self.predict([r[col] for r in rows], [r[pair_col] for r in rows] if pair_col else None, batch_size)
        records = [{"line": ln, **r, "prediction": p} for ln, r, p in zip(lines, rows, preds)]
        if output.suffix.lower() in (".csv", ".tsv"):
            import io

            buf = io.StringIO()
            flat = []
            for rec in records:  # prediction fields never overwrite an input column (e.g. a gold label)
                row = {k: v for k, v in rec.items() if k != "prediction"}
                for k, v in rec["prediction"].items():
                    row[f"predicted_{k}" if k in row else k] = json.dumps(v) if isinstance(v, (dict, list)) else v
                flat.append(row)
            writer = csv.DictWriter(buf, fieldnames=list(flat[0]), delimiter="\t" if output.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(flat)
            atomic_write_text(output, buf.getvalue())
        else:
            atomic_write_jsonl(output, records)
        return len(records)

    def evaluate(self, path: str | Path, batch_size: int | None = None) -> dict[str, Any]:
        """Metrics on a labelled file, with the training run's columns, labels and missing-value policy."""
        data_cfg = self.cfg.data.model_copy(update={"train": str(path), "validation": None, "test": None,
                                                    "hub_dataset": None})
        loaded = load_splits(data_cfg)
        table = loaded.splits["train"]
        self.task.encode_labels("evaluation", table)
        data = self.task.preprocess(table, self.tokenizer)
        out = run_inference(self.model, self.task, data, batch_size or self.cfg.eval.batch_size, self.device)
        return {"rows": len(table), "dropped_rows": len(loaded.dropped), "loss": out.loss,
                **self.task.metrics(out.scores, out.labels)}
