"""Data loading and checks: readers, bad input, missing values, labels, splits, the data report, the cache."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import TOPICS, load_splits, sentiment_rows, write_csv, write_jsonl
from tunesmith.config import DataConfig, load_config
from tunesmith.data.prepare import make_missing_splits
from tunesmith.data.readers import read_file
from tunesmith.errors import ConfigError, DataError
from tunesmith.run import prepare
from tunesmith.tasks.base import get_task
from tunesmith.tasks.classification import TextClassification
from tunesmith.tokens import truncate


# ---------------------------------------------------------------- helpers

@pytest.fixture
def make_cfg(tiny_model_dir, tmp_path):
    """A RunConfig on the tiny model with the given data section (and optional task/model keys)."""
    def make(data: dict, task: dict | None = None, model: dict | None = None, **top):
        raw = {
            "task": {"type": "text-classification", **(task or {})},
            "model": {"name": tiny_model_dir, "max_length": 32, **(model or {})},
            "data": {"cache_dir": str(tmp_path / "cache"), **{k: str(v) if isinstance(v, Path) else v
                                                               for k, v in data.items()}},
            "output_dir": str(tmp_path / "run"),
            **top,
        }
        return load_config(raw)
    return make


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def data_error(fn, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return info.value


def rows_from(tables) -> list[tuple[str, object]]:
    return list(zip(tables["text"], tables["label"]))


# ---------------------------------------------------------------- bad input: columns, bytes, shape

def test_missing_column_names_column_file_and_suggests(tmp_path):
    f = write_csv(tmp_path / "reviews.csv", sentiment_rows(10, seed=0))
    err = data_error(load_splits, DataConfig(train=str(f), text_column="txt"))
    msg = str(err)
    assert str(f) in msg
    assert "column 'txt'" in msg and "data.text_column" in msg
    assert "did you mean 'text'?" in msg
    assert "the file has columns: text, label" in msg
    assert err.file == str(f) and err.column == "txt"


def test_missing_label_column_suggests_close_name(tmp_path):
    f = write_csv(tmp_path / "reviews.csv", [{"text": r["text"], "labels": r["label"]}
                                              for r in sentiment_rows(10, seed=0)])
    msg = str(data_error(load_splits, DataConfig(train=str(f))))
    assert "column 'label'" in msg and "data.label_column" in msg and "did you mean 'labels'?" in msg


def test_missing_column_in_the_test_file_names_that_file(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(20, seed=0))
    test = write_csv(tmp_path / "test.csv", [{"sentence": r["text"], "label": r["label"]}
                                             for r in sentiment_rows(5, seed=1)])
    msg = str(data_error(load_splits, DataConfig(train=str(train), test=str(test))))
    assert str(test) in msg and "column 'text'" in msg


def test_undecodable_bytes_name_file_and_line(tmp_path):
    f = tmp_path / "latin1.csv"
    f.write_bytes(b"text,label\ngood food,pos\ncaf\xe9 was bad,neg\nfine,pos\n")
    err = data_error(read_file, f)
    msg = str(err)
    assert str(f) in msg and "line 3" in msg and err.line == 3
    assert "UTF-8" in msg and "iconv" in msg  # the hint says how to fix it


def test_undecodable_bytes_in_jsonl(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'{"text": "ok", "label": "pos"}\n{"text": "ok", "label": "neg"}\n'
                  b'{"text": "ok", "label": "pos"}\n{"text": "na\xefve", "label": "neg"}\n')
    assert data_error(read_file, f).line == 4


def test_utf8_bom_is_accepted(tmp_path):
    f = tmp_path / "bom.csv"
    f.write_bytes("text,label\ncafé,pos\n".encode("utf-8-sig"))
    assert read_file(f) == [(2, {"text": "café", "label": "pos"})]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_empty_file(tmp_path, suffix):
    f = tmp_path / f"empty{suffix}"
    f.write_bytes(b"")
    msg = str(data_error(load_splits, DataConfig(train=str(f))))
    assert str(f) in msg and "empty" in msg


def test_whitespace_only_file_is_empty(tmp_path):
    f = write_text(tmp_path / "blank.jsonl", "\n  \n\n")
    msg = str(data_error(read_file, f))
    assert str(f) in msg and "the file is empty" in msg


@pytest.mark.parametrize("suffix,header", [(".csv", "text,label\n"), (".tsv", "text\tlabel\n")])
def test_header_only_file(tmp_path, suffix, header):
    f = write_text(tmp_path / f"header{suffix}", header)
    msg = str(data_error(load_splits, DataConfig(train=str(f))))
    assert str(f) in msg and "header but no rows" in msg


def test_empty_json_array(tmp_path):
    f = write_text(tmp_path / "empty.json", "[]")
    msg = str(data_error(read_file, f))
    assert str(f) in msg and "empty" in msg


def test_wrong_number_of_fields_gives_line_number(tmp_path):
    # line 3 is blank (skipped, but still counted); line 5 has an unquoted comma in the text
    f = write_text(tmp_path / "fields.csv",
                   "text,label\ngood film,pos\n\nbad film,neg\nslow, but fine,pos\nok,pos\n")
    err = data_error(read_file, f)
    msg = str(err)
    assert str(f) in msg and "line 5" in msg and err.line == 5
    assert "expected 2 fields (text, label) but found 3" in msg
    assert "unquoted delimiter" in msg  # the hint


def test_wrong_number_of_fields_after_a_multiline_quoted_field(tmp_path):
    f = write_text(tmp_path / "multi.csv",
                   'text,label\n"two\nlines",pos\nok,neg\ntoo,many,fields\n')
    assert data_error(read_file, f).line == 5


def test_too_few_fields_in_tsv(tmp_path):
    f = write_text(tmp_path / "few.tsv", "text\tlabel\ngood\tpos\nno label here\n")
    err = data_error(read_file, f)
    assert err.line == 3 and "found 1" in str(err) and str(f) in str(err)


def test_invalid_json_line_gives_line_number(tmp_path):
    f = write_text(tmp_path / "bad.jsonl",
                   '{"text": "a", "label": "pos"}\n\n{"text": "b", "label": "neg"}\n{"text": "c", "label": }\n')
    err = data_error(read_file, f)
    msg = str(err)
    assert str(f) in msg and "line 4" in msg and "not valid JSON" in msg


def test_jsonl_line_that_is_not_an_object(tmp_path):
    f = write_text(tmp_path / "arr.jsonl", '{"text": "a", "label": "pos"}\n["b", "neg"]\n')
    err = data_error(read_file, f)
    assert err.line == 2 and "expected a JSON object per line, got list" in str(err)


def test_invalid_json_array_gives_line_number(tmp_path):
    f = write_text(tmp_path / "bad.json", '[\n  {"text": "a", "label": "pos"},\n  {"text": "b" "label": "neg"}\n]\n')
    err = data_error(read_file, f)
    assert err.line == 3 and str(f) in str(err)


def test_jsonl_with_unicode_line_separator_inside_a_string(tmp_path):
    f = tmp_path / "u2028.jsonl"
    f.write_text(json.dumps({"text": "first\u2028second", "label": "pos"}, ensure_ascii=False) + "\n"
                 + json.dumps({"text": "x\x85y", "label": "neg"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_file(f) == [(1, {"text": "first\u2028second", "label": "pos"}),
                            (2, {"text": "x\x85y", "label": "neg"})]


def test_unknown_extension_asks_for_data_format(tmp_path):
    f = write_text(tmp_path / "data.txt", "text,label\na,b\n")
    msg = str(data_error(read_file, f))
    assert str(f) in msg and "data.format" in msg
    # and data.format makes it readable
    assert read_file(f, "csv") == [(2, {"text": "a", "label": "b"})]


def test_file_not_found_names_the_file(tmp_path):
    msg = str(data_error(load_splits, DataConfig(train=str(tmp_path / "nope.csv"))))
    assert "nope.csv" in msg and "not found" in msg


# ---------------------------------------------------------------- bad labels

def test_unknown_label_in_test_split(tmp_path, make_cfg):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(40, seed=0))
    test_rows = sentiment_rows(6, seed=1)
    test_rows[3]["label"] = "neutral"  # data row 4 -> line 5 (the header is line 1)
    test = write_csv(tmp_path / "test.csv", test_rows)
    err = data_error(prepare, make_cfg({"train": train, "test": test}))
    msg = str(err)
    assert str(test) in msg and str(train) not in msg
    assert "line 5" in msg and err.line == 5
    assert "column 'label'" in msg
    assert "'neutral'" in msg
    assert "known labels: neg, pos" in msg


def test_float_label_in_classification_points_at_regression(tmp_path, make_cfg):
    rows = [{"text": r["text"], "label": i % 2} for i, r in enumerate(sentiment_rows(20, seed=0))]
    rows[5]["label"] = 0.5  # line 7
    train = write_csv(tmp_path / "train.csv", rows)
    err = data_error(prepare, make_cfg({"train": train}))
    msg = str(err)
    assert str(train) in msg and "line 7" in msg and "column 'label'" in msg
    assert "0.5" in msg and "float" in msg
    assert "task.problem_type: regression" in msg


def test_float_label_in_jsonl_test_split(tmp_path, make_cfg):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": r["text"], "label": i % 2}
                                                    for i, r in enumerate(sentiment_rows(20, seed=0))])
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0.25}])
    err = data_error(prepare, make_cfg({"train": train, "test": test}))
    assert err.file == str(test) and err.line == 2 and "task.problem_type: regression" in str(err)


def test_integral_float_labels_are_classes(tmp_path, make_cfg):
    train = write_csv(tmp_path / "train.csv", [{"text": r["text"], "label": f"{i % 2}.0"}
                                                for i, r in enumerate(sentiment_rows(30, seed=0))])
    p = prepare(make_cfg({"train": train}))
    assert p.task.labels == ["0", "1"]


def test_a_single_class_is_an_error(tmp_path, make_cfg):
    train = write_csv(tmp_path / "train.csv", [{"text": f"text {i}", "label": "pos"} for i in range(20)])
    msg = str(data_error(prepare, make_cfg({"train": train})))
    assert str(train) in msg and "only 1 distinct label" in msg


def test_non_numeric_regression_label(tmp_path, make_cfg):
    train = write_csv(tmp_path / "train.csv", [{"text": "a", "label": "1.5"}, {"text": "b", "label": "high"},
                                                {"text": "c", "label": "0.1"}])
    err = data_error(prepare, make_cfg({"train": train}, task={"problem_type": "regression"}))
    assert err.line == 3 and "not a number" in str(err)


# ---------------------------------------------------------------- missing values

MISSING_CSV = ("text,label\n"
               "good movie,pos\n"     # 2
               ",neg\n"               # 3: missing text
               "bad food,neg\n"       # 4
               "great day,\n"         # 5: missing label
               "   ,pos\n"            # 6: blank text
               "poor show,neg\n"      # 7
               "lovely place,pos\n")  # 8


def test_on_missing_drop_records_every_dropped_row(tmp_path):
    f = write_text(tmp_path / "missing.csv", MISSING_CSV)
    data = load_splits(DataConfig(train=str(f), on_missing="drop"))
    t = data.splits["train"]
    assert t.line == [2, 4, 7, 8]
    assert t["text"] == ["good movie", "bad food", "poor show", "lovely place"]
    assert [(d["file"], d["line"], d["split"]) for d in data.dropped] == [
        (str(f), 3, "train"), (str(f), 5, "train"), (str(f), 6, "train")]
    reasons = [d["reason"] for d in data.dropped]
    assert reasons == ["missing text (column 'text')", "missing label (column 'label')",
                       "missing text (column 'text')"]
    assert data.dropped[1]["row"] == {"text": "great day", "label": ""}
    assert data.missing == {"train": {"text": 2, "label": 1}}


def test_on_missing_drop_jsonl_nulls_and_absent_keys(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"text": "a", "label": "x"}, {"text": None, "label": "x"},
                                           {"label": "y"}, {"text": "b", "label": None}, {"text": "c", "label": "y"}])
    data = load_splits(DataConfig(train=str(f)))
    assert data.splits["train"]["text"] == ["a", "c"]
    assert [d["line"] for d in data.dropped] == [2, 3, 4]


def test_on_missing_fill_keeps_rows_with_filled_text(tmp_path):
    f = write_text(tmp_path / "missing.csv", MISSING_CSV)
    data = load_splits(DataConfig(train=str(f), on_missing="fill", fill_value="[EMPTY]"))
    t = data.splits["train"]
    assert t.line == [2, 3, 4, 6, 7, 8]  # rows 3 and 6 kept, filled
    assert t["text"][t.line.index(3)] == "[EMPTY]" and t["label"][t.line.index(3)] == "neg"
    assert t["text"][t.line.index(6)] == "[EMPTY]"
    # a missing label cannot be filled: still dropped, and reported
    assert [(d["line"], d["reason"]) for d in data.dropped] == [(5, "missing label (column 'label')")]
    assert data.dropped[0]["file"] == str(f)


def test_on_missing_error_names_file_line_and_column(tmp_path):
    f = write_text(tmp_path / "missing.csv", MISSING_CSV)
    err = data_error(load_splits, DataConfig(train=str(f), on_missing="error"))
    msg = str(err)
    assert str(f) in msg and "line 3" in msg and "column 'text'" in msg
    assert "data.on_missing" in msg


def test_on_missing_error_for_a_missing_label(tmp_path):
    f = write_text(tmp_path / "m.csv", "text,label\ngood,pos\nbad,\n")
    err = data_error(load_splits, DataConfig(train=str(f), on_missing="error"))
    assert err.line == 3 and err.column == "label" and str(f) in str(err)


def test_all_rows_dropped_is_an_error(tmp_path):
    f = write_text(tmp_path / "m.csv", "text,label\n,pos\n,neg\n")
    msg = str(data_error(load_splits, DataConfig(train=str(f))))
    assert "no usable rows" in msg and str(f) in msg


def test_dropped_rows_reach_the_run_folder(tmp_path, base_config):
    rows = sentiment_rows(60, seed=3)
    rows[4]["text"] = ""      # line 6
    rows[10]["label"] = ""    # line 12
    train = write_csv(tmp_path / "holes.csv", rows)
    cfg = dict(base_config, data={**base_config["data"], "train": str(train)},
               train={**base_config["train"], "epochs": 1, "max_steps": 1})
    import tunesmith

    run = tunesmith.train(cfg)
    dropped = [json.loads(x) for x in (run.dir / "dropped_rows.jsonl").read_text().splitlines()]
    assert [(d["file"], d["line"]) for d in dropped] == [(str(train), 6), (str(train), 12)]
    assert "missing text" in dropped[0]["reason"] and "missing label" in dropped[1]["reason"]
    report = json.loads((run.dir / "data_report.json").read_text())
    assert report["missing"]["dropped_rows"] == 2
    assert report["missing"]["policy"] == "drop"
    assert report["missing"]["per_split"]["train"] == {"text": 1, "label": 1}
    assert sum(s["rows"] for s in report["splits"].values()) == 58
    assert any("2 rows dropped" in w for w in report["warnings"])


# ---------------------------------------------------------------- readers agree

FORMAT_ROWS = [{"text": "good, really good", "label": "pos"}, {"text": 'the "best" day', "label": "pos"},
               {"text": "awful service", "label": "neg"}, {"text": "café déjà vu ✓", "label": "neg"},
               {"text": "poor show", "label": "neg"}]


def _write_all_formats(d: Path, rows: list[dict]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {"csv": write_csv(d / "d.csv", rows),
           "tsv": write_text(d / "d.tsv", "text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows)),
           "json": write_text(d / "d.json", json.dumps(rows, ensure_ascii=False, indent=2)),
           "jsonl": write_jsonl(d / "d.jsonl", rows),
           "parquet": d / "d.parquet"}
    pq.write_table(pa.Table.from_pylist(rows), out["parquet"])
    return out


def test_all_formats_give_the_same_rows(tmp_path):
    files = _write_all_formats(tmp_path, FORMAT_ROWS)
    expected = [(r["text"], r["label"]) for r in FORMAT_ROWS]
    for fmt, path in files.items():
        t = load_splits(DataConfig(train=str(path))).splits["train"]
        assert rows_from(t) == expected, fmt
        assert t.file == [str(path)] * len(FORMAT_ROWS)
    # line numbers: CSV/TSV count the header; JSONL is per line; JSON and Parquet per record
    assert load_splits(DataConfig(train=str(files["csv"]))).splits["train"].line == [2, 3, 4, 5, 6]
    assert load_splits(DataConfig(train=str(files["jsonl"]))).splits["train"].line == [1, 2, 3, 4, 5]
    assert load_splits(DataConfig(train=str(files["parquet"]))).splits["train"].line == [1, 2, 3, 4, 5]


def test_explicit_format_overrides_the_extension(tmp_path):
    f = write_jsonl(tmp_path / "rows.data", FORMAT_ROWS)
    t = load_splits(DataConfig(train=str(f), format="jsonl")).splits["train"]
    assert rows_from(t) == [(r["text"], r["label"]) for r in FORMAT_ROWS]


def test_gzipped_csv(tmp_path):
    import gzip

    f = tmp_path / "d.csv.gz"
    f.write_bytes(gzip.compress(b"text,label\ngood,pos\nbad,neg\n"))
    assert read_file(f) == [(2, {"text": "good", "label": "pos"}), (3, {"text": "bad", "label": "neg"})]


def test_formats_agree_through_prepare(tmp_path, make_cfg):
    rows = sentiment_rows(30, seed=5)
    files = _write_all_formats(tmp_path, rows)
    seen = {}
    for fmt, path in files.items():
        p = prepare(make_cfg({"train": path}))
        seen[fmt] = (p.task.labels, {s: rows_from(t) for s, t in p.data.splits.items()})
    assert all(v == seen["csv"] for v in seen.values())


# ---------------------------------------------------------------- label kinds

def _find(p, text: str) -> tuple[str, int]:
    for split, t in p.data.splits.items():
        if text in t["text"]:
            return split, t["text"].index(text)
    raise AssertionError(f"{text!r} not in any split")


def test_string_labels(tmp_path, make_cfg):
    p = prepare(make_cfg({"train": write_csv(tmp_path / "t.csv", sentiment_rows(30, seed=0))}))
    assert p.task.problem_type == "single_label" and p.task.labels == ["neg", "pos"]
    assert set().union(*(set(t["label"]) for t in p.data.splits.values())) == {0, 1}


def test_integer_labels_sort_numerically(tmp_path, make_cfg):
    rows = [{"text": f"{r['text']} {i}", "label": [2, 10, 33][i % 3]} for i, r in enumerate(sentiment_rows(45, 0))]
    p = prepare(make_cfg({"train": write_jsonl(tmp_path / "t.jsonl", rows)}))
    assert p.task.labels == ["2", "10", "33"]
    split, i = _find(p, rows[1]["text"])
    assert p.data.splits[split]["label"][i] == 1  # 10 is the second class


def test_integer_labels_in_csv_and_jsonl_agree(tmp_path, make_cfg):
    rows = [{"text": r["text"], "label": i % 2} for i, r in enumerate(sentiment_rows(30, 1))]
    a = prepare(make_cfg({"train": write_csv(tmp_path / "t.csv", rows)}))
    b = prepare(make_cfg({"train": write_jsonl(tmp_path / "t.jsonl", rows)}))
    assert a.task.labels == b.task.labels == ["0", "1"]
    assert a.data.splits["train"]["label"] == b.data.splits["train"]["label"]


def _topic_rows(n: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        tags = rng.sample(sorted(TOPICS), k=rng.randint(1, 2))
        words = [w for t in tags for w in rng.sample(TOPICS[t], 2)]
        out.append({"text": " ".join(words) + f" day {i}", "label": tags})
    return out


def test_multi_label_from_json_lists(tmp_path, make_cfg):
    rows = _topic_rows(40, 0)
    rows[0] = {"text": "goal vote unique", "label": ["sports", "politics"]}
    p = prepare(make_cfg({"train": write_jsonl(tmp_path / "t.jsonl", rows)}))
    assert p.task.problem_type == "multi_label"
    assert p.task.labels == ["politics", "sports", "tech"]
    split, i = _find(p, "goal vote unique")
    assert p.data.splits[split]["label"][i] == [1.0, 1.0, 0.0]
    assert p.report["problem_type"] == "multi_label"


def test_multi_label_from_delimited_strings(tmp_path, make_cfg):
    rows = [{"text": r["text"], "label": "|".join(r["label"])} for r in _topic_rows(40, 1)]
    rows[0] = {"text": "chip law unique", "label": "tech | politics"}
    p = prepare(make_cfg({"train": write_csv(tmp_path / "t.csv", rows), "label_separator": "|"}))
    assert p.task.problem_type == "multi_label"
    assert p.task.labels == ["politics", "sports", "tech"]
    split, i = _find(p, "chip law unique")
    assert p.data.splits[split]["label"][i] == [1.0, 0.0, 1.0]
    # made splits cannot be stratified on label sets
    assert "not stratified" in p.report["splits"]["validation"]["made"]


def test_regression_labels(tmp_path, make_cfg):
    rows = [{"text": r["text"], "label": round(0.1 * i, 2)} for i, r in enumerate(sentiment_rows(30, 2))]
    rows[0]["text"] = "regression unique"
    p = prepare(make_cfg({"train": write_csv(tmp_path / "t.csv", rows)}, task={"problem_type": "regression"}))
    assert p.task.problem_type == "regression" and p.task.labels == ["value"]
    split, i = _find(p, "regression unique")
    assert p.data.splits[split]["label"][i] == 0.0
    all_labels = sorted(x for t in p.data.splits.values() for x in t["label"])
    assert all_labels == pytest.approx([round(0.1 * i, 2) for i in range(30)])
    assert isinstance(p.data.splits["train"]["label"][0], float)
    assert set(p.report["label_distribution"]["train"]) == {"mean", "std", "min", "max"}


def test_sentence_pairs_get_token_type_ids(tmp_path, make_cfg):
    rows = [{"premise": r["text"], "hypothesis": "the movie was good", "label": r["label"]}
            for r in sentiment_rows(30, 3)]
    p = prepare(make_cfg({"train": write_csv(tmp_path / "pairs.csv", rows), "text_column": "premise",
                          "text_pair_column": "hypothesis"}))
    assert p.task.problem_type == "single_label" and p.task.labels == ["neg", "pos"]
    t = p.data.splits["train"]
    assert t.get("text_pair") is not None and set(t.get("text_pair")) == {"the movie was good"}
    ds = p.tokenized["train"]
    assert "token_type_ids" in ds.column_names
    sep = p.tokenizer.sep_token_id
    for ids, types in zip(ds["input_ids"], ds["token_type_ids"]):
        assert len(ids) == len(types)
        assert 1 in types and types[0] == 0
        first_sep = ids.index(sep)
        assert set(types[:first_sep + 1]) == {0} and set(types[first_sep + 1:]) == {1}


def test_missing_pair_column_is_reported(tmp_path, make_cfg):
    f = write_csv(tmp_path / "t.csv", sentiment_rows(10, 0))
    msg = str(data_error(prepare, make_cfg({"train": f, "text_pair_column": "text_b"})))
    assert "column 'text_b'" in msg and "data.text_pair_column" in msg and str(f) in msg


# ---------------------------------------------------------------- made splits

def _imbalanced_rows(n: int = 300) -> list[dict]:
    """60% a, 30% b, 10% c: unstratified splits of 30 would often miss the proportions."""
    labels = ["a"] * int(n * 0.6) + ["b"] * int(n * 0.3) + ["c"] * int(n * 0.1)
    return [{"text": f"text number {i}", "label": lab} for i, lab in enumerate(labels)]


def _split(tmp_path, make_cfg, **data):
    cfg = make_cfg({"train": write_csv(tmp_path / "imb.csv", _imbalanced_rows()), **data})
    loaded = load_splits(cfg.data)
    task = get_task(cfg)
    task.fit(loaded.splits)
    make_missing_splits(loaded, cfg.data, task.stratify_keys)
    return loaded, task


def test_made_splits_sizes_follow_ratios(tmp_path, make_cfg):
    data, _ = _split(tmp_path, make_cfg, validation_ratio=0.1, test_ratio=0.2)
    sizes = {s: len(t) for s, t in data.splits.items()}
    assert sizes == {"train": 210, "validation": 30, "test": 60}
    # disjoint, and together exactly the input rows
    lines = [ln for t in data.splits.values() for ln in t.line]
    assert sorted(lines) == list(range(2, 302))


def test_made_splits_are_stratified(tmp_path, make_cfg):
    data, task = _split(tmp_path, make_cfg, validation_ratio=0.1, test_ratio=0.1)

    def props(t):
        c = Counter(t["label"])
        return np.array([c[k] / len(t) for k in range(len(task.labels))])

    train = props(data.splits["train"])
    for split in ("validation", "test"):
        assert np.abs(props(data.splits[split]) - train).max() <= 0.04, split
    assert "stratified by label" in data.made_splits["validation"]
    assert "stratified by label" in data.made_splits["test"]


def test_made_splits_are_seeded(tmp_path, make_cfg):
    a, _ = _split(tmp_path, make_cfg)
    b, _ = _split(tmp_path, make_cfg)
    c, _ = _split(tmp_path, make_cfg, split_seed=7)
    for s in ("train", "validation", "test"):
        assert a.splits[s].line == b.splits[s].line
    assert a.splits["test"].line != c.splits["test"].line
    assert a.splits["validation"].line != c.splits["validation"].line
    assert "seed 7" in c.made_splits["test"]


def test_only_missing_splits_are_made(tmp_path, make_cfg):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(100, 0))
    val = write_csv(tmp_path / "val.csv", sentiment_rows(10, 1))
    p = prepare(make_cfg({"train": train, "validation": val}))
    assert len(p.data.splits["validation"]) == 10 and p.report["splits"]["validation"]["made"] is None
    assert p.report["splits"]["validation"]["source"] == str(val)
    assert len(p.data.splits["test"]) == 10 and "taken from train" in p.report["splits"]["test"]["made"]
    assert len(p.data.splits["train"]) == 90


def test_data_report_says_splits_were_made(tmp_path, make_cfg):
    p = prepare(make_cfg({"train": write_csv(tmp_path / "imb.csv", _imbalanced_rows()),
                          "validation_ratio": 0.1, "test_ratio": 0.2}))
    splits = p.report["splits"]
    assert splits["train"]["made"] is None
    assert splits["test"]["made"].startswith("60 rows (20%) taken from train, seed 42")
    assert splits["validation"]["made"].startswith("30 rows (10%) taken from train, seed 42")
    assert {s: info["rows"] for s, info in splits.items()} == {"train": 210, "test": 60, "validation": 30}


def test_max_rows_keep_seeded_stratified_samples_of_each_split(tmp_path, make_cfg):
    """300 rows (60/30/10%): held-out splits come from the whole file, then each split is sampled."""
    p = prepare(make_cfg({"train": write_csv(tmp_path / "imb.csv", _imbalanced_rows()),
                          "max_train_rows": 50, "max_eval_rows": 20}))
    splits = p.report["splits"]
    assert {s: info["rows"] for s, info in splits.items()} == {"train": 50, "test": 20, "validation": 20}
    assert splits["train"]["sampled"] == "50 of 240 rows, seed 42, stratified by label"
    assert splits["test"]["sampled"] == "20 of 30 rows, seed 42, stratified by label"
    labels = {s: Counter(p.task.labels[y] for y in p.data.splits[s]["label"]) for s in ("train", "test")}
    assert labels["train"] == {"a": 30, "b": 15, "c": 5} and labels["test"] == {"a": 12, "b": 6, "c": 2}
    # the held-out rows are those of the unsampled run, so no sample size moves a row into training
    full = prepare(make_cfg({"train": write_csv(tmp_path / "imb.csv", _imbalanced_rows())}))
    for s in ("train", "validation", "test"):
        assert set(p.data.splits[s].line) <= set(full.data.splits[s].line)
    again = prepare(make_cfg({"train": str(tmp_path / "imb.csv"), "max_train_rows": 50, "max_eval_rows": 20}))
    assert again.data.splits["train"].line == p.data.splits["train"].line


def test_max_rows_above_a_splits_size_keep_it_whole(tmp_path, make_cfg):
    p = prepare(make_cfg({"train": write_csv(tmp_path / "imb.csv", _imbalanced_rows()), "max_train_rows": 1000}))
    assert p.report["splits"]["train"]["rows"] == 240 and "sampled" not in p.report["splits"]["train"]


def test_too_few_rows_to_split(tmp_path, make_cfg):
    train = write_csv(tmp_path / "tiny.csv", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    msg = str(data_error(prepare, make_cfg({"train": train})))
    assert "too few" in msg and "data.validation" in msg


# ---------------------------------------------------------------- the data report

def test_report_leakage_duplicates_and_lengths(tmp_path, make_cfg, tiny_model_dir):
    train_rows = sentiment_rows(40, 10)
    val_rows = sentiment_rows(10, 11)
    test_rows = sentiment_rows(10, 12)
    # exact duplicates inside train: one text three times, another twice -> 3 duplicate rows
    train_rows[5] = dict(train_rows[4])
    train_rows[6] = dict(train_rows[4])
    train_rows[21] = dict(train_rows[20])
    # a leaked text: train data row 30 (line 31) appears as test data row 7 (line 8)
    test_rows[6] = {"text": train_rows[29]["text"], "label": train_rows[29]["label"]}
    # long texts: more than model.max_length tokens
    long_text = " ".join(["good"] + ["the movie"] * 30)
    for k in (1, 2, 3):
        train_rows[10 + k] = {"text": f"{long_text} day{'s' * k}", "label": "pos"}
    for r in val_rows + test_rows:  # keep validation/test free of other leaks
        r["text"] += " story"
    test_rows[6]["text"] = train_rows[29]["text"]
    train = write_csv(tmp_path / "train.csv", train_rows)
    val = write_csv(tmp_path / "val.csv", val_rows)
    test = write_csv(tmp_path / "test.csv", test_rows)
    p = prepare(make_cfg({"train": train, "validation": val, "test": test}, model={"max_length": 16}))
    r = p.report

    # leakage, with both locations
    leak = r["leakage"]["train-test"]
    assert leak["rows"] == 1
    assert leak["fraction_of_test"] == pytest.approx(0.1)
    ex = leak["examples"][0]
    assert ex["input"] == {"text": train_rows[29]["text"]}
    assert ex["train"] == {"file": str(train), "line": 31}
    assert ex["test"] == {"file": str(test), "line": 8}
    assert r["leakage"]["train-validation"]["rows"] == 0
    assert any("train and test" in w and "optimistic" in w for w in r["warnings"])

    # duplicates within train
    dup = r["duplicates"]["train"]
    assert dup["duplicate_rows"] == 3 and dup["groups"] == 2
    assert any(e["lines"] == [6, 7, 8] for e in dup["examples"])
    assert r["duplicates"]["test"]["duplicate_rows"] == 0

    # token lengths against the tokenizer itself
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    n = np.array([len(tok(row["text"])["input_ids"]) for row in train_rows])
    lens = r["token_lengths"]["train"]
    assert r["max_length"] == 16
    assert lens["p50"] == pytest.approx(np.percentile(n, 50))
    assert lens["p95"] == pytest.approx(np.percentile(n, 95))
    assert lens["max"] == n.max() > 16
    assert lens["truncated"] == int((n > 16).sum()) >= 3
    assert lens["truncated_pct"] == pytest.approx(round(100 * (n > 16).mean(), 2))
    # and the tokens kept never exceed max_length
    assert max(p.tokenized["train"]["length"]) == 16


def test_report_label_distribution_and_summary_print(tmp_path, make_cfg, capsys):
    from rich.console import Console

    from tunesmith.data.report import print_report

    rows = [{"text": f"good {i}", "label": "pos" if i < 30 else "neg"} for i in range(40)]
    p = prepare(make_cfg({"train": write_csv(tmp_path / "t.csv", rows)}))
    dist = p.report["label_distribution"]
    assert sum(sum(d.values()) for d in dist.values()) == 40
    assert sum(d["pos"] for d in dist.values()) == 30
    assert set(p.report["splits"]) == {"train", "validation", "test"}
    print_report(p.report, Console(width=200, force_terminal=False))
    out = capsys.readouterr().out
    assert "Data report (text-classification, single_label, 2 labels)" in out and "train" in out and "validation" in out


# ---------------------------------------------------------------- tokenization cache

def test_second_prepare_hits_the_cache(tmp_path, make_cfg, monkeypatch):
    cfg = make_cfg({"train": write_csv(tmp_path / "t.csv", sentiment_rows(60, 4))})
    first = prepare(cfg)
    assert first.report["tokenization_cache_hits"] == {"train": False, "test": False, "validation": False}

    def boom(self, table, tokenizer):
        raise AssertionError("preprocess called although the cache should have been used")

    monkeypatch.setattr(TextClassification, "preprocess", boom)
    second = prepare(cfg)
    assert second.report["tokenization_cache_hits"] == {"train": True, "test": True, "validation": True}
    for s in first.tokenized:
        assert second.tokenized[s]["input_ids"] == first.tokenized[s]["input_ids"]
        assert second.tokenized[s]["labels"] == first.tokenized[s]["labels"]
    assert second.report["token_lengths"] == first.report["token_lengths"]


def test_cache_misses_when_tokenization_settings_change(tmp_path, make_cfg):
    f = write_csv(tmp_path / "t.csv", sentiment_rows(60, 4))
    prepare(make_cfg({"train": f}))
    again = prepare(make_cfg({"train": f}, model={"max_length": 8}))
    assert not any(again.report["tokenization_cache_hits"].values())
    assert max(again.tokenized["train"]["length"]) <= 8


# ---------------------------------------------------------------- Hub datasets

def test_hub_class_labels_are_read_as_their_names(tmp_path):
    """A Hub dataset stores labels as ClassLabel ids: rows get the names (and -1, "no label", is missing)."""
    import datasets
    from tunesmith.data.readers import read_hub

    feats = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                               "ner_tags": datasets.List(datasets.ClassLabel(names=["O", "B-loc", "I-loc"])),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"tokens": [["in", "new", "york"], ["hi"]], "ner_tags": [[0, 1, 2], [0]],
                                     "label": [1, -1]}, features=feats)
    (tmp_path / "hub").mkdir()
    ds.to_parquet(str(tmp_path / "hub" / "train.parquet"))
    assert read_hub(str(tmp_path / "hub"), None, "train") == [
        (1, {"tokens": ["in", "new", "york"], "ner_tags": ["O", "B-loc", "I-loc"], "label": "pos"}),
        (2, {"tokens": ["hi"], "ner_tags": ["O"], "label": None})]


def test_hub_dataset_and_files_together_are_a_config_error():
    with pytest.raises(ConfigError) as err:
        load_config({"data": {"hub_dataset": "stanfordnlp/imdb", "train": "train.csv"}})
    assert "data.hub_dataset and data.train are both set" in str(err.value)


def test_hub_dataset_offline_is_a_clean_data_error(make_cfg):
    err = data_error(prepare, make_cfg({"hub_dataset": "glue"}))
    msg = str(err)
    assert "Hub" in msg and "glue" in msg
    assert "offline" in msg.lower()
    assert "data.train" in msg  # says what to do instead


# ---------------------------------------------------------------- truncation

def _fake(n_content: int):
    ids = [100] + list(range(1, n_content + 1)) + [101]
    special = [1] + [0] * n_content + [1]
    return ids, special


def test_truncate_head_keeps_the_start():
    ids, special = _fake(50)
    out, types = truncate(ids, special, None, 10, "head")
    assert out == [100, 1, 2, 3, 4, 5, 6, 7, 8, 101] and types is None


def test_truncate_head_tail_keeps_start_and_end():
    ids, special = _fake(50)
    out, _ = truncate(ids, special, None, 10, "head_tail")
    assert len(out) == 10
    assert out[0] == 100 and out[-1] == 101  # special tokens never cut
    content = out[1:-1]
    assert content[:2] == [1, 2]            # the start (a quarter of the budget)...
    assert content[2:] == list(range(45, 51))  # ...and the end (the rest)
    assert 25 not in content


def test_truncate_short_input_is_unchanged():
    ids, special = _fake(5)
    assert truncate(ids, special, [0] * 7, 10, "head_tail") == (ids, [0] * 7)


def test_truncate_pairs_cut_the_longer_text_and_keep_types():
    # [CLS] a1..a20 [SEP] b1..b4 [SEP]
    ids = [100] + list(range(1, 21)) + [101] + list(range(201, 205)) + [101]
    special = [1] + [0] * 20 + [1] + [0] * 4 + [1]
    types = [0] * 22 + [1] * 5
    out, out_types = truncate(ids, special, types, 12, "head_tail")
    assert len(out) == len(out_types) == 12
    assert out.count(101) == 2 and out[0] == 100
    assert [x for x in out if x > 200] == [201, 202, 203, 204]  # the short text is kept whole
    a = [x for x in out if 0 < x < 100]
    assert a[0] == 1 and a[-1] == 20 and len(a) == 5
    assert out_types == [0] * (1 + 5 + 1) + [1] * 5


def test_head_tail_through_prepare(tmp_path, make_cfg, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    words = ["superb"] + ["the", "movie", "was", "quite"] * 10 + ["horrible"]
    long_text = " ".join(words)
    rows = sentiment_rows(30, 6) + [{"text": long_text, "label": "neg"}]
    train = write_csv(tmp_path / "t.csv", rows)
    val = write_csv(tmp_path / "v.csv", sentiment_rows(6, 7))
    test = write_csv(tmp_path / "s.csv", sentiment_rows(6, 8))
    first, last = tok.convert_tokens_to_ids(["superb", "horrible"])

    def kept(truncation: str) -> list[int]:
        p = prepare(make_cfg({"train": train, "validation": val, "test": test},
                             model={"max_length": 16, "truncation": truncation}))
        i = p.data.splits["train"]["text"].index(long_text)
        row = p.tokenized["train"][i]
        assert row["n_tokens"] == len(words) + 2 and row["length"] == 16
        return row["input_ids"]

    ht = kept("head_tail")
    assert len(ht) == 16 and ht[0] == tok.cls_token_id and ht[-1] == tok.sep_token_id
    assert ht[1] == first and ht[-2] == last
    head = kept("head")
    assert head[1] == first and last not in head


def test_pretty_printed_json_syntax_error_gives_the_parsers_line_and_column(tmp_path):
    # a SQuAD file written with indent=2 and a comma lost on line 10: not reparsed as JSON Lines (line 1)
    squad = {"data": [{"title": "T", "paragraphs": [{"context": "Paris is big.", "qas": [
        {"id": "q1", "question": "What?", "answers": [{"text": "Paris", "answer_start": 0}]}]}]}]}
    lines = json.dumps(squad, indent=2).split("\n")
    assert lines[9] == '              "id": "q1",'
    lines[9] = lines[9].rstrip(",")
    f = write_text(tmp_path / "dev.json", "\n".join(lines) + "\n")
    err = data_error(read_file, f)
    assert str(err) == f"file {f}, line 11: not valid JSON: Expecting ',' delimiter (character 15)"
    # a truncated file: the end of the text, not its first line
    f = write_text(tmp_path / "cut.json", "\n".join(json.dumps(squad, indent=2).split("\n")[:12]) + "\n")
    assert str(data_error(read_file, f)) == (f"file {f}, line 13: not valid JSON: Expecting value (character 1)")
    # JSON Lines saved as .json is still read line by line, its errors per line
    f = write_text(tmp_path / "rows.json", '{"text": "a", "label": "pos"}\n{"text": "b", "label": }\n')
    assert str(data_error(read_file, f)) == (f"file {f}, line 2: not valid JSON: Expecting value (character 24)")
