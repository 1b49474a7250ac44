"""`tunesmith init` chooses the task from the file: one test per rule (a tiny file each), the reason it
prints, and a written config that validates (and that `check-data` accepts, on the task's tiny model)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_cli import invoke, one_line

from conftest import write_jsonl
from tunesmith.config import load_config

CONLL = "EU\tB-ORG\nrejects\tO\nGerman\tB-MISC\n\nPeter\tB-PER\nwent\tO\n"
SQUAD = {"version": "1.1", "data": [
    {"title": "t", "paragraphs": [
        {"context": "the cat sat on the mat", "qas": [
            {"id": "q1", "question": "who sat?", "answers": [{"text": "the cat", "answer_start": 0}]},
            {"id": "q2", "question": "where?", "answers": [{"text": "the mat", "answer_start": 15}]}]},
        {"context": "dogs bark", "qas": [
            {"id": "q3", "question": "what barks?", "answers": [{"text": "dogs", "answer_start": 0}]}]}]}]}
CHATS = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
         for i in range(3)]
PAIRS = [{"source": f"the cat number {i}", "target": f"die Katze Nr. {i}x"} for i in range(5)]  # 16 and 16 chars
DOCS = [{"document": f"a long document about topic {i} with many words in it", "summary": f"topic {i}"}
        for i in range(5)]  # 51 and 7 characters


def lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _init(data: Path, tmp_path: Path) -> tuple[str, Any]:
    out = tmp_path / "tunesmith.yaml"
    result = invoke("init", "--data", data, "-o", out)
    assert result.exit_code == 0, result.output
    return one_line(result.output), out


def test_a_conll_file_is_token_classification(tmp_path: Path) -> None:
    data = tmp_path / "ner.conll"
    data.write_text(CONLL, encoding="utf-8")
    text, out = _init(data, tmp_path)
    assert text.startswith(f"- token-classification: {data} is a CoNLL column file (2 columns, tags in the last) - "
                           "token classification: 2 sentences, 4 distinct tags")
    cfg = load_config(out)
    assert (cfg.task.type, cfg.data.format) == ("token-classification", "conll")


def test_a_txt_of_space_separated_tokens_and_tags_is_conll(tmp_path: Path) -> None:
    data = tmp_path / "ner.txt"
    data.write_text(CONLL.replace("\t", " "), encoding="utf-8")
    text, out = _init(data, tmp_path)
    assert f"- token-classification: {data} is a CoNLL column file (2 columns, tags in the last)" in text
    assert "which a .txt file states with data.format: conll" in text
    assert (load_config(out).task.type, load_config(out).data.format) == ("token-classification", "conll")


def test_a_prose_txt_is_not_conll(tmp_path: Path) -> None:
    data = tmp_path / "notes.txt"
    data.write_text("one sentence here\n\nand another, longer one\n", encoding="utf-8")
    result = invoke("init", "--data", data, "-o", tmp_path / "c.yaml")
    assert result.exit_code == 2 and "cannot tell the format from the extension '.txt'" in one_line(result.output)


def test_rows_of_tokens_and_tags_are_token_classification(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "ner.jsonl", [{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}] * 3)
    text, out = _init(data, tmp_path)
    assert text.startswith("- token-classification: its rows hold a list of tokens ('tokens') and a tag per token "
                           "('ner_tags') - columns: tags <- 'ner_tags' -")
    cfg = load_config(out)
    assert (cfg.task.type, cfg.data.columns) == ("token-classification", {"tags": "ner_tags"})


def test_a_squad_file_is_question_answering(tmp_path: Path) -> None:
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(SQUAD), encoding="utf-8")
    text, out = _init(data, tmp_path)
    assert text.startswith(f"- question-answering: {data} is a SQuAD file (\"data\" -> paragraphs -> qas): 3 questions "
                           "over 2 contexts in its first rows - no validation/test files")
    cfg = load_config(out)
    assert (cfg.task.type, cfg.data.columns, cfg.data.format) == ("question-answering", {}, "auto")


@pytest.mark.parametrize("rows, reason, columns", [
    (CHATS, "its rows hold chats (a list of turns in 'messages')", {}),
    ([{"conversations": c["messages"]} for c in CHATS], "its rows hold chats (a list of turns in 'conversations')",
     {"messages": "conversations"}),
    ([{"prompt": "2+2=", "response": "4"}] * 3, "its rows pair a prompt ('prompt') with a response ('response')", {}),
    ([{"instruction": "add", "input": "2 2", "output": "4"}] * 3,
     "its rows hold instructions ('instruction', Alpaca style)", {"response": "output"}),
])
def test_chats_prompts_and_instructions_are_text_generation(tmp_path: Path, rows: list, reason: str,
                                                            columns: dict) -> None:
    text, out = _init(write_jsonl(tmp_path / "sft.jsonl", rows), tmp_path)
    assert text.startswith(f"- text-generation: {reason} -")
    assert "set a causal LM for text generation" in text
    cfg = load_config(out)
    assert (cfg.task.type, cfg.data.columns) == ("text-generation", columns)


def test_source_and_target_of_similar_length_are_translation(tmp_path: Path) -> None:
    text, out = _init(write_jsonl(tmp_path / "mt.jsonl", PAIRS), tmp_path)
    assert text.startswith("- translation: its rows pair a text ('source') with one about as long ('target', median "
                           "length ratio 1.00 >= 0.5) -")
    assert load_config(out).task.type == "translation"


def test_two_language_columns_are_translation_mapped_by_data_columns(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "en-de.jsonl", [{"en": r["source"], "de": r["target"]} for r in PAIRS])
    text, out = _init(data, tmp_path)
    assert text.startswith("- translation: its rows pair a text ('en') with one about as long ('de', median length "
                           "ratio 1.00 >= 0.5) - columns: source <- 'en', target <- 'de' -")
    cfg = load_config(out)
    assert (cfg.task.type, cfg.data.columns) == ("translation", {"source": "en", "target": "de"})


def test_much_shorter_targets_are_summarization(tmp_path: Path) -> None:
    text, out = _init(write_jsonl(tmp_path / "docs.jsonl", DOCS), tmp_path)
    assert text.startswith(f"- summarization: 'summary' is much shorter than 'document' (median length ratio "
                           f"{7 / 51:.2f} < 0.5) -")
    assert load_config(out).task.type == "summarization"


def test_a_target_column_of_class_labels_stays_classification(tmp_path: Path) -> None:
    rows = [{"text": f"some review number {i}", "target": ["pos", "neg"][i % 2]} for i in range(6)]
    text, out = _init(write_jsonl(tmp_path / "cls.jsonl", rows), tmp_path)
    assert text.startswith("- text-classification: no other task's columns found (text, target) - text column: "
                           "'text' (its name) - label column: 'target' (its name)")
    cfg = load_config(out)
    assert (cfg.task.type, cfg.data.label_column) == ("text-classification", "target")


@pytest.mark.parametrize("name, content, model, task", [
    ("ner.conll", CONLL * 6, "bert", "token-classification"),
    ("squad.json", json.dumps(SQUAD), "bert", "question-answering"),
    ("sft.jsonl", lines([{"prompt": f"{i} + 1 =", "response": f"{i + 1}"} for i in range(12)]), "llama",
     "text-generation"),
    ("en-de.jsonl", lines([{"en": f"the cat number {i}", "de": f"die Katze Nr. {i}x"} for i in range(12)]), "bert",
     "translation"),
    ("docs.jsonl", lines([{"document": f"a long document about topic {i} with many words", "summary": f"topic {i}"}
                          for i in range(12)]), "t5", "summarization"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 24 else "")
def test_the_written_config_passes_check_data(tmp_path: Path, tiny_models: Any, name: str, content: str, model: str,
                                              task: str) -> None:
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    _, out = _init(data, tmp_path)
    assert yaml.safe_load(out.read_text())["task"] == {"type": task}
    result = invoke("check-data", out, "--set", f"model.name={tiny_models(model)}",
                    "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert result.exit_code == 0, result.output
    assert f"Data report ({task}" in result.output
