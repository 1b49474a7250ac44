"""Data read rightly or refused clearly: headers, duplicate names, label spellings, nested cells, paths,
long fields, broken gzip, the tokenization cache's integrity, and the data report at 80 columns."""
from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import load_splits, sentiment_rows, write_csv, write_jsonl
from tunesmith.cli import app
from tunesmith.config import DataConfig, load_config
from tunesmith.data.readers import read_file
from tunesmith.errors import ConfigError, DataError
from tunesmith.run import prepare


@pytest.fixture
def make_cfg(tiny_model_dir, tmp_path):
    def make(data: dict, task: dict | None = None, model: dict | None = None):
        return load_config({
            "task": {"type": "text-classification", **(task or {})},
            "model": {"name": tiny_model_dir, "max_length": 32, **(model or {})},
            "data": {"cache_dir": str(tmp_path / "cache"),
                     **{k: str(v) if isinstance(v, Path) else v for k, v in data.items()}},
            "output_dir": str(tmp_path / "run"),
        })
    return make


def data_error(fn, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return info.value


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


# ---------------------------------------------------------------- item 10: headerless CSV/TSV

# an AG-News-like file: label, title, description, and no header row
NEWS = ('3,"Wall St. Bears Claw Back Into the Black (Reuters)","Reuters - Short-sellers, Wall Street\'s dwindling '
        'band of ultra-cynics, are seeing green again."\n'
        '3,"Carlyle Looks Toward Commercial Aerospace (Reuters)","Reuters - Private investment firm Carlyle Group, '
        'which has a reputation for making well-timed occasionally controversial plays."\n'
        '4,"IBM Unveils New Server Line","IBM on Tuesday unveiled a new line of servers aimed at small and '
        'mid-sized businesses."\n'
        '2,"Phelps Wins Again in Athens","Michael Phelps won his fifth gold medal of the Athens Olympics on '
        'a warm evening in the pool."\n')


def test_headerless_csv_by_position_keeps_the_first_row(tmp_path):
    f = tmp_path / "news.csv"
    f.write_text(NEWS, encoding="utf-8")
    t = load_splits(DataConfig(train=str(f), header=False, text_column=2, label_column=0)).splits["train"]
    assert t.line == [1, 2, 3, 4]
    assert t["label"] == ["3", "3", "4", "2"]
    assert t["text"][0].startswith("Reuters - Short-sellers")


def test_headerless_csv_with_column_names(tmp_path):
    f = tmp_path / "news.csv"
    f.write_text(NEWS, encoding="utf-8")
    cfg = DataConfig(train=str(f), header=False, column_names=["label", "title", "text"])
    t = load_splits(cfg).splits["train"]
    assert t.line == [1, 2, 3, 4] and t["label"] == ["3", "3", "4", "2"]
    assert t["text"][3].startswith("Michael Phelps")


def test_headerless_file_read_with_a_header_says_the_first_row_looks_like_data(tmp_path):
    f = tmp_path / "news.csv"
    f.write_text(NEWS, encoding="utf-8")
    err = data_error(load_splits, DataConfig(train=str(f)))
    msg = str(err)
    assert err.file == str(f) and err.line == 1 and err.column == "text"
    assert "the first row looks like data" in msg
    assert "data.header: false" in msg


def test_a_real_header_without_the_column_gets_did_you_mean_not_the_header_hint(tmp_path):
    f = write_csv(tmp_path / "t.csv", [{"id": str(i), "txt": r["text"], "label": r["label"]}
                                       for i, r in enumerate(sentiment_rows(20, 0))])
    msg = str(data_error(load_splits, DataConfig(train=str(f))))
    assert "did you mean 'txt'?" in msg and "data.header" not in msg


def test_column_names_need_header_false():
    with pytest.raises(ConfigError) as info:
        load_config({"data": {"train": "x.csv", "column_names": ["label", "text"]}})
    assert "data.header: false" in str(info.value)


def test_init_on_a_headerless_file_says_so_and_writes_the_setting(tmp_path):
    f = tmp_path / "news.csv"
    f.write_text(NEWS, encoding="utf-8")
    out = tmp_path / "news.yaml"
    result = invoke("init", "--data", f, "-o", out)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "header: no header detected (first row looks like data)" in text
    raw = yaml.safe_load(out.read_text())
    assert raw["data"]["header"] is False
    assert (raw["data"]["text_column"], raw["data"]["label_column"]) == (2, 0)
    cfg = load_config(out)
    assert load_splits(cfg.data).splits["train"].line == [1, 2, 3, 4]


def test_init_on_a_file_with_a_header_says_detected(tmp_path):
    f = write_csv(tmp_path / "t.csv", sentiment_rows(20, 0))
    out = tmp_path / "t.yaml"
    result = invoke("init", "--data", f, "-o", out)
    assert result.exit_code == 0, result.output
    assert "header: detected" in result.output
    assert yaml.safe_load(out.read_text())["data"]["header"] is True


def test_predict_reads_a_headerless_file_like_training_did(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from tunesmith.serving.predictor import Predictor
    from tunesmith.tasks.base import get_task

    cfg = load_config({"model": {"name": tiny_model_dir}, "data": {"train": "x.csv", "header": False,
                                                                   "text_column": 2, "label_column": 0}})
    task = get_task(cfg, {"problem_type": "single_label", "labels": ["3", "4"]})
    predictor = Predictor(task.load_model(tiny_model_dir)[0], AutoTokenizer.from_pretrained(tiny_model_dir), task,
                          cfg, device="cpu")
    f = tmp_path / "news.csv"
    f.write_text(NEWS, encoding="utf-8")
    assert predictor.predict_file(f, tmp_path / "out.jsonl") == 4
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(x)["tunesmith"]["line"] for x in lines] == [1, 2, 3, 4]


# ---------------------------------------------------------------- item 11: duplicated names

def test_duplicate_csv_header_is_an_error(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label,text\ngood,pos,other\n", encoding="utf-8")
    err = data_error(read_file, f)
    assert err.file == str(f) and err.line == 1
    assert "column 'text' more than once" in str(err)


def test_duplicate_jsonl_key_is_an_error(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y", "text": "c"}\n', encoding="utf-8")
    err = data_error(read_file, f)
    assert err.line == 2 and "key 'text' appears twice" in str(err)


def test_duplicate_json_array_key_is_an_error(tmp_path):
    f = tmp_path / "d.json"
    f.write_text('[{"text": "a", "label": "x", "label": "y"}]', encoding="utf-8")
    assert "key 'label' appears twice" in str(data_error(read_file, f))


# ---------------------------------------------------------------- item 12: label spellings

def _labelled(labels: list) -> list[dict]:
    return [{"text": f"{r['text']} {i}", "label": labels[i % len(labels)]}
            for i, r in enumerate(sentiment_rows(12 * len(labels), 3))]


def test_string_labels_with_leading_zeros_stay_distinct(tmp_path, make_cfg):
    p = prepare(make_cfg({"train": write_csv(tmp_path / "t.csv", _labelled(["01", "1", "2"]))}))
    assert p.task.labels == ["01", "1", "2"]


def test_007_and_7_are_two_classes(tmp_path, make_cfg):
    p = prepare(make_cfg({"train": write_csv(tmp_path / "t.csv", _labelled(["007", "7"]))}))
    assert p.task.labels == ["007", "7"]


def test_canonical_integer_strings_still_sort_numerically(tmp_path, make_cfg):
    p = prepare(make_cfg({"train": write_csv(tmp_path / "t.csv", _labelled(["10", "2", "33"]))}))
    assert p.task.labels == ["2", "10", "33"]


def test_integral_json_floats_are_integer_classes(tmp_path, make_cfg):
    p = prepare(make_cfg({"train": write_jsonl(tmp_path / "t.jsonl", _labelled([1.0, 0.0]))}))
    assert p.task.labels == ["0", "1"]


def test_json_number_and_string_of_the_same_label_is_an_error(tmp_path, make_cfg):
    rows = _labelled([0, 1])
    rows[5]["label"] = "1"  # line 6; line 2 has the number 1
    f = write_jsonl(tmp_path / "t.jsonl", rows)
    err = data_error(prepare, make_cfg({"train": f}))
    assert err.file == str(f) and err.line == 6 and err.column == "label"
    assert "label '1' is a string here but a number at line 2 of the same file" in str(err)


# ---------------------------------------------------------------- item 13: objects and lists as text

def test_nested_object_as_text_is_an_error(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": "good", "label": "pos"},
                                           {"text": {"title": "bad", "body": "awful"}, "label": "neg"}])
    err = data_error(load_splits, DataConfig(train=str(f)))
    assert (err.file, err.line, err.column) == (str(f), 2, "text")
    assert "the text is an object, not a string" in str(err)


def test_list_as_text_is_an_error_unless_joining_is_asked_for(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": ["good", "day"], "label": "pos"},
                                           {"text": "bad", "label": "neg"}, {"text": 42, "label": "neg"}])
    err = data_error(load_splits, DataConfig(train=str(f)))
    assert (err.line, err.column) == (1, "text") and "data.join_text_lists" in str(err)
    t = load_splits(DataConfig(train=str(f), join_text_lists=" ")).splits["train"]
    assert t["text"] == ["good day", "bad", "42"]


def test_a_list_of_non_strings_is_not_joined(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": ["good", {"x": 1}], "label": "pos"}])
    err = data_error(load_splits, DataConfig(train=str(f), join_text_lists=" "))
    assert (err.line, err.column) == (1, "text") and "the text is a list" in str(err)


# ---------------------------------------------------------------- item 14: relative data paths

def test_relative_path_missing_beside_the_config_is_not_taken_from_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    cfg = tmp_path / "configs" / "c.yaml"
    cfg.write_text("data:\n  train: data/train.csv\n", encoding="utf-8")
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "train.csv", sentiment_rows(10, 0))
    monkeypatch.chdir(tmp_path)  # the file exists relative to here, but not relative to the config
    err = data_error(load_config, cfg)
    msg = str(err)
    assert err.file == str(cfg)
    assert "data.train file not found: 'data/train.csv'" in msg
    assert f"looked for {tmp_path / 'configs' / 'data' / 'train.csv'}" in msg
    assert "relative to the config file's folder" in msg


def test_relative_path_in_a_dict_is_relative_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = data_error(load_splits, DataConfig(train="nope.csv"))
    assert err.file == "nope.csv" and f"looked for {tmp_path / 'nope.csv'}" in str(err)


# ---------------------------------------------------------------- item 17: long fields

@pytest.mark.parametrize("delimiter,ext", [(",", "csv"), ("\t", "tsv")])
def test_fields_longer_than_131072_characters_read(tmp_path, delimiter, ext):
    long_text = "good " * 40_000  # 200,000 characters
    f = tmp_path / f"long.{ext}"
    f.write_text(f"text{delimiter}label\n{long_text}{delimiter}pos\nbad{delimiter}neg\n", encoding="utf-8")
    before = csv.field_size_limit()
    assert read_file(f) == [(2, {"text": long_text, "label": "pos"}), (3, {"text": "bad", "label": "neg"})]
    assert csv.field_size_limit() == before  # the process-wide limit is left as it was


# ---------------------------------------------------------------- item 18: broken gzip

def test_truncated_gzip_is_a_data_error(tmp_path):
    f = tmp_path / "t.csv.gz"
    f.write_bytes(gzip.compress(b"text,label\n" + b"good,pos\n" * 500)[:-20])
    err = data_error(read_file, f)
    assert err.file == str(f) and "the gzip file is truncated" in str(err)


def test_plain_file_named_gz_is_a_data_error(tmp_path):
    f = tmp_path / "t.csv.gz"
    f.write_text("text,label\ngood,pos\n", encoding="utf-8")
    err = data_error(read_file, f)
    assert err.file == str(f) and "not a valid gzip file" in str(err)


def test_truncated_gzip_through_the_cli_is_one_clear_error(tmp_path, tiny_model_dir):
    f = tmp_path / "t.csv.gz"
    f.write_bytes(gzip.compress(b"text,label\n" + b"good,pos\n" * 500)[:-20])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": tiny_model_dir}, "data": {"train": "t.csv.gz"}}))
    result = invoke("check-data", cfg)
    assert result.exit_code == 2, result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    assert f"error: file {f}: the gzip file is truncated" in " ".join(result.output.split())


# ---------------------------------------------------------------- item 8: the tokenization cache

@pytest.fixture
def truncating_tokenizer_model(tiny_model_dir, tmp_path) -> str:
    """The tiny model with truncation set in tokenizer.json, as real Hub tokenizers ship it: the first call
    to the tokenizer clears that setting, which changed the old cache key mid-run."""
    d = tmp_path / "tiny-truncating"
    shutil.copytree(tiny_model_dir, d)
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["truncation"] = {"direction": "Right", "max_length": 512, "strategy": "LongestFirst", "stride": 0}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    return str(d)


def _entries(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "cache" / "tokenized").iterdir() if not p.name.startswith(".")}


def test_four_identical_runs_hit_the_cache_after_the_first(tmp_path, make_cfg, truncating_tokenizer_model):
    cfg = make_cfg({"train": write_csv(tmp_path / "t.csv", sentiment_rows(60, 4))},
                   model={"name": truncating_tokenizer_model})
    hits = [tuple(prepare(cfg).report["tokenization_cache_hits"].values()) for _ in range(4)]
    assert hits == [(False, False, False)] + [(True, True, True)] * 3
    assert len(_entries(tmp_path)) == 3  # one entry per split


def test_windowed_splits_hit_the_cache_without_a_rebuild(tmp_path, tiny_model_dir):
    """A task whose long inputs become several features (NER windows) has more dataset rows than
    examples; the second run still hits the cache, with no rebuild warning."""
    folder = Path(__file__).parent / "contract" / "token-classification"
    cfg = load_config({
        "task": {"type": "token-classification", "stride": 4},
        "model": {"name": tiny_model_dir, "max_length": 16},
        "data": {s: str(folder / f"{s}.jsonl") for s in ("train", "validation", "test")}
        | {"cache_dir": str(tmp_path / "cache")}, "output_dir": str(tmp_path / "run")})
    first = prepare(cfg)
    assert len(first.tokenized["train"]) > len(first.data.splits["train"])  # windows were made
    second = prepare(cfg)
    assert second.report["tokenization_cache_hits"] == {"train": True, "validation": True, "test": True}
    assert not [w for w in second.report["warnings"] if "rebuilt" in w]


def _cache_folder(ds) -> Path:
    return Path(ds.cache_files[0]["filename"]).parent


def test_a_cache_file_cut_at_a_record_batch_boundary_is_rebuilt(tmp_path, make_cfg):
    import pyarrow as pa

    rows = [{"text": f"good day {i}" if i % 2 else f"bad day {i}", "label": "pos" if i % 2 else "neg"}
            for i in range(1500)]
    cfg = make_cfg({"train": write_csv(tmp_path / "t.csv", rows)})
    first = prepare(cfg)
    n = len(first.data.splits["train"])
    assert n == 1200
    expected = list(first.tokenized["train"]["input_ids"])  # read now: the dataset maps the file we cut
    arrow = next(_cache_folder(first.tokenized["train"]).glob("*.arrow"))
    with pa.ipc.open_stream(pa.OSFile(str(arrow))) as r:
        batches = list(r)
    assert len(batches) > 1
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, batches[0].schema) as w:
        w.write_batch(batches[0])  # the file as if cut after its first record batch
    second = prepare(cfg)
    assert second.report["tokenization_cache_hits"]["train"] is False
    assert len(second.tokenized["train"]) == n
    assert list(second.tokenized["train"]["input_ids"]) == expected
    assert any("was rebuilt: its files do not match their recorded hashes" in w
               for w in second.report["warnings"])
    assert prepare(cfg).report["tokenization_cache_hits"]["train"] is True  # the rebuilt entry is good


def test_another_splits_folder_swapped_in_is_rebuilt(tmp_path, make_cfg):
    cfg = make_cfg({"train": write_csv(tmp_path / "t.csv", sentiment_rows(100, 4))})
    first = prepare(cfg)
    expected = list(first.tokenized["validation"]["input_ids"])
    val, test = _cache_folder(first.tokenized["validation"]), _cache_folder(first.tokenized["test"])
    shutil.rmtree(val)
    shutil.copytree(test, val)
    second = prepare(cfg)
    assert second.report["tokenization_cache_hits"] == {"train": True, "test": True, "validation": False}
    assert list(second.tokenized["validation"]["input_ids"]) == expected
    assert any("was rebuilt: it holds another table's tokens" in w for w in second.report["warnings"])


# ---------------------------------------------------------------- item 21: the report at 80 columns

def _report(source: str) -> dict:
    lens = {"p50": 12.0, "p90": 20.0, "p95": 24.0, "p99": 30.0, "max": 31, "mean": 12.5, "truncated": 7,
            "truncated_pct": 1.28}
    labels = ["World", "Sports", "Business", "Sci/Tech", "bad\x1b[31mred"]
    return {
        "task": "text-classification", "headline": "text-classification, single_label, 5 labels",
        "problem_type": "single_label", "labels": labels,
        "splits": {"train": {"rows": 4360, "source": source, "made": None},
                   "test": {"rows": 545, "source": source,
                            "made": "545 rows (10%) taken from train, seed 42, stratified by label"},
                   "validation": {"rows": 545, "source": source,
                                  "made": "545 rows (10%) taken from train, seed 42, stratified by label"}},
        "label_distribution": {"train": dict(zip(labels, [1090123, 1090, 1089, 1088, 3])),
                               "test": dict(zip(labels, [136, 137, 136, 135, 1])),
                               "validation": dict(zip(labels, [136, 136, 137, 135, 1]))},
        "token_lengths": {s: lens for s in ("train", "test", "validation")},
        "duplicates": {s: {"duplicate_rows": 17} for s in ("train", "test", "validation")},
        "missing": {"policy": "drop", "per_split": {"train": {"text": 3, "label": 0}}, "dropped_rows": 3},
        "leakage": {"train-test": {"rows": 2}},
        "warnings": ["3 rows dropped (policy on_missing=drop)"],
    }


def test_report_at_80_columns_cuts_no_number_description_or_path(tmp_path):
    from rich.console import Console

    from tunesmith.data.report import print_report

    source = str(tmp_path / "a" / "rather" / "deeply" / "nested" / "folder" / "of" / "news" / "ag_news_train.csv")
    buf = io.StringIO()
    print_report(_report(source), Console(width=80, file=buf), dropped_rows_file=tmp_path / "dropped_rows.jsonl")
    out = buf.getvalue()
    assert "Data report (text-classification, single_label, 5 labels)" in out
    assert f"train: 4360 rows, from {source}" in out
    assert "test: 545 rows, 545 rows (10%) taken from train, seed 42, stratified by label" in out
    for count in ("World=1090123", "Sports=1090", "Business=1089", "Sci/Tech=1088", "World=136", "Sports=137"):
        assert count in out
    assert "bad\\x1b[31mred=3" in out and "\x1b" not in out  # label names go through printable()
    assert "tokens p50/p95/max: 12/24/31, truncated: 7 (1.28%), duplicate rows: 17" in out
    assert f"dropped rows are listed in {tmp_path / 'dropped_rows.jsonl'}" in out


def _holes_config(tmp_path: Path, tiny_model_dir: str) -> Path:
    rows = sentiment_rows(60, 3)
    rows[4]["text"] = ""  # line 6
    write_csv(tmp_path / "holes.csv", rows)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": tiny_model_dir, "max_length": 32},
                                   "data": {"train": "holes.csv", "cache_dir": str(tmp_path / "cache")}}))
    return cfg


def test_check_data_says_truly_where_the_dropped_rows_are(tmp_path, tiny_model_dir):
    cfg = _holes_config(tmp_path, tiny_model_dir)
    result = invoke("check-data", cfg)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "see dropped_rows.jsonl" not in out
    assert "the dropped rows were not saved: pass --report FILE to write them to dropped_rows.jsonl beside FILE" \
        in out
    report = tmp_path / "out" / "report.json"
    result = invoke("check-data", cfg, "--report", report)
    assert result.exit_code == 0, result.output
    dropped = tmp_path / "out" / "dropped_rows.jsonl"
    assert f"dropped rows are listed in {dropped}" in " ".join(result.output.split())
    assert [json.loads(x)["line"] for x in dropped.read_text().splitlines()] == [6]


def test_predict_takes_list_and_object_cells_as_training_did(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from tunesmith.serving.predictor import Predictor
    from tunesmith.tasks.base import get_task

    def predictor(join: str | None) -> Predictor:
        cfg = load_config({"model": {"name": tiny_model_dir}, "data": {"train": "x.jsonl", "join_text_lists": join}})
        task = get_task(cfg, {"problem_type": "single_label", "labels": ["neg", "pos"]})
        return Predictor(task.load_model(tiny_model_dir)[0], AutoTokenizer.from_pretrained(tiny_model_dir), task, cfg,
                         device="cpu")

    f = tmp_path / "in.jsonl"
    f.write_text('{"text": ["a", "good", "day"]}\n{"text": "a good day"}\n', encoding="utf-8")
    joined = predictor(" ")
    joined.predict_file(f, tmp_path / "out.jsonl")
    first, second = [json.loads(x)["tunesmith"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert (first.pop("line"), second.pop("line")) == (1, 2)
    assert first == second  # the list was joined into the very text of the second row
    with pytest.raises(DataError, match="the text is a list, not a string"):
        predictor(None).predict_file(f, tmp_path / "out2.jsonl")
    f.write_text('{"text": {"title": "a good day"}}\n', encoding="utf-8")
    with pytest.raises(DataError, match="the text is an object, not a string"):
        joined.predict_file(f, tmp_path / "out3.jsonl")


def test_conll_reader_skips_docstart_and_a_stray_byte_order_mark(tmp_path):
    from tunesmith.data.readers import read_file

    f = tmp_path / "t.conll"
    f.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n\ufeff\n",
                 encoding="utf-8")
    assert read_file(f) == [(3, {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}),
                            (6, {"tokens": ["Peter"], "tags": ["B-PER"]})]
    assert read_file(f, conll_tag_column=2)[0][1]["tags"] == ["B-NP", "B-VP"]
    f.write_text("EU B-ORG\nrejects\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_file(f)
    assert err.value.line == 2 and "1 columns here, 2 on the file's first token line" in str(err.value)


def _ner_splits(tmp_path: Path, files: dict[str, str], **task: object) -> tuple:
    """A token-classification task and the splits of CoNLL files written from `files` (split -> text)."""
    from tunesmith.data.prepare import load_splits as load
    from tunesmith.tasks.base import get_task

    data = {}
    for split, text in files.items():
        (tmp_path / f"{split}.conll").write_text(text, encoding="utf-8")
        data[split] = str(tmp_path / f"{split}.conll")
    cfg = load_config({"task": {"type": "token-classification", **task}, "data": data})
    t = get_task(cfg)
    return t, load(cfg.data, t.roles()).splits


def test_conll_tag_errors_name_the_tokens_own_line(tmp_path):
    # the sentence starts on line 3; its bad tag is on line 6 (a -DOCSTART- line ends a sentence, so the
    # tokens of one sentence are consecutive lines)
    text = "-DOCSTART- O\n\nAnn B-PER\nmet O\nBob B-PER\nin E-LOC\nRome I-LOC\n\n"
    task, splits = _ner_splits(tmp_path, {"train": text}, tag_scheme="iob2")
    with pytest.raises(DataError) as e:
        task.fit(splits)
    assert str(e.value).split("\n")[0] == (f"file {tmp_path / 'train.conll'}, line 6, column 'tags': tag 'E-LOC' "
                                           "is not an IOB2 tag")
    # an entity type unknown to training: the line of the entity's first token
    task, splits = _ner_splits(tmp_path, {"train": "Ann B-PER\nmet O\n", "test": "Bob B-PER\nin O\nRome B-LOC\n"})
    with pytest.raises(DataError) as e:
        task.fit(splits)
    assert str(e.value).split("\n")[0] == (f"file {tmp_path / 'test.conll'}, line 3, column 'tags': entity type "
                                           "'LOC' in split 'test' never occurs in the training split")
