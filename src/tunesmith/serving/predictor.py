"""One Predictor for Python, `tunesmith predict`, `tunesmith evaluate` and (later) the server."""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import RunConfig
from ..console import quiet_libraries
from ..data.prepare import Table, as_text, load_splits, read_configured
from ..data.readers import is_missing
from ..errors import ConfigError, DataError, ModelError
from ..evaluation.inference import run_inference
from ..io import atomic_write_jsonl, atomic_write_text, mismatched_files, nearest_existing
from ..tasks.base import Task, get_task


class Predictor:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, task: Task, cfg: RunConfig,
                 device: torch.device | None = None) -> None:
        self.model, self.tokenizer, self.task, self.cfg = model, tokenizer, task, cfg
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.task.preprocess_setup(tokenizer)

    @classmethod
    @quiet_libraries()
    def load(cls, run_dir: str | Path, device: str | None = None) -> "Predictor":
        """Load from a run folder or its `model/` folder (both hold everything prediction needs).

        The folder is checked against the file hashes recorded at export before anything loads:
        transformers quietly substitutes what it cannot find (a missing tokenizer.json falls back
        to another vocabulary), which gives wrong predictions instead of an error.
        """
        from transformers import AutoTokenizer

        from ..run import STATE_FILE

        root = Path(run_dir)
        model_dir = root / "model" if (root / "model" / STATE_FILE).exists() else root
        state_path = model_dir / STATE_FILE
        if not state_path.exists():
            raise ConfigError(f"{root} is not a tunesmith run folder (no model/{STATE_FILE}); "
                              "has training finished?")
        try:
            saved = json.loads(state_path.read_text(encoding="utf-8"))
            cfg = RunConfig.model_validate(saved["config"])
            task = get_task(cfg, saved["task"])
        except (ValueError, KeyError, TypeError) as e:  # JSON, UTF-8 and validation errors are ValueErrors
            raise ModelError(f"{state_path} is damaged and cannot be read ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); copy the model folder again "
                             "from the run, or train again") from None
        check_model_files(model_dir, saved.get("files"))
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = task.load_model(str(model_dir))
        except Exception as e:
            raise ModelError(f"cannot load the model in {model_dir}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None
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
        rows = read_configured(path, self.cfg.data)
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
        """Predict every row of a data file; write JSONL (or CSV/TSV by extension) with inputs and outputs.

        Input rows are kept unchanged: what tunesmith adds goes under its own names (JSONL: one
        `tunesmith` object; CSV: `input_line` and `pred_*` columns), renamed if the input uses them.
        """
        path, output = Path(path), Path(output)
        check_writable(output)  # before the predictions, which may take long
        lines, rows = self._read_inputs(path)
        col, pair_col = self.cfg.data.text_column, self.cfg.data.text_pair_column
        # text cells as training took them (lists joined or refused, objects refused)
        texts = [[as_text(r[c], self.cfg.data, str(path), ln, c) for ln, r in zip(lines, rows)]
                 for c in (col, pair_col) if c]
        preds = self.predict(texts[0], texts[1] if pair_col else None, batch_size)
        suffix = output.suffix.lower()
        try:
            if suffix in (".csv", ".tsv"):
                atomic_write_text(output, csv_text(rows, lines, preds, "\t" if suffix == ".tsv" else ","))
            else:
                key = free_name("tunesmith", set().union(*rows))
                atomic_write_jsonl(output, ({**r, key: {"line": ln, **p}} for ln, r, p in zip(lines, rows, preds)))
        except OSError as e:
            raise ConfigError(f"cannot write predictions to {output}: {e.strerror or e}") from None
        return len(rows)

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


def check_model_files(model_dir: Path, files: Any) -> None:
    """Every file recorded at export is present and unchanged (folders exported before hashes: not checked)."""
    from ..run import STATE_FILE

    if files is None:
        return
    if not isinstance(files, dict):
        raise ModelError(f"{model_dir / STATE_FILE} is damaged: its 'files' entry is not a mapping")
    for name in mismatched_files(model_dir, files)[:1]:
        if not (model_dir / name).is_file():
            raise ModelError(f"the model folder {model_dir} is incomplete: {name} is missing; "
                             "copy the whole model folder again from the run")
        raise ModelError(f"{model_dir / name} has changed since training (its sha256 is not the one recorded in "
                         f"{STATE_FILE}): the file is damaged or was replaced; copy the model folder again from "
                         "the run")


def check_writable(output: Path) -> None:
    """Fail before predicting when the output cannot be written (a folder, or under a file or read-only folder)."""
    if output.is_dir():
        raise ConfigError(f"cannot write predictions to {output}: it is a folder; name a file such as "
                          f"{output / 'predictions.jsonl'}")
    parent = nearest_existing(output.parent)
    if not parent.is_dir():
        raise ConfigError(f"cannot write predictions to {output}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write predictions to {output}: the folder {parent} is not writable")


def free_name(name: str, taken: set) -> str:
    """`name`, or `name_1`, `name_2`, ... whichever the input does not use: input columns are never overwritten."""
    k, candidate = 0, name
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting with = + - @ TAB CR gets a leading quote.

    Plain numbers such as -3 or +1.5e-3 are left as they are (a spreadsheet reads them as numbers).
    """
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_text(rows: list[dict], lines: list[int], preds: list[dict], delimiter: str) -> str:
    """CSV/TSV: the input columns (union of every row's keys, first-seen order), then `input_line` and
    the prediction as `pred_label`, `pred_score`, one `pred_prob:<label>` per label (or `pred_labels`,
    `pred_value`), each renamed when the input already has a column of that name."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    taken = set(columns)
    added: dict[tuple, str] = {}  # (prediction key, label or None) -> column name

    def add(key: tuple, name: str) -> None:
        if key not in added:
            added[key] = free_name(name, taken)
            taken.add(added[key])

    add(("line", None), "input_line")
    for p in preds:
        for k, v in p.items():
            if isinstance(v, dict):
                for sub in v:
                    add((k, sub), f"pred_{k.removesuffix('s')}:{sub}")
            else:
                add((k, None), f"pred_{k}")
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow([safe_cell(c) for c in columns + list(added.values())])
    for r, ln, p in zip(rows, lines, preds):
        ours = {("line", None): ln}
        for k, v in p.items():
            ours.update({(k, sub): x for sub, x in v.items()} if isinstance(v, dict) else {(k, None): v})
        writer.writerow([safe_cell(r.get(c, "")) for c in columns] + [safe_cell(ours.get(key, ""))
                                                                       for key in added])
    return buf.getvalue()
