"""Explanations: integrated gradients on the input embeddings, per word with offsets, for every task that
declares `explains` (classification, NER, QA), from Python, the CLI and the server."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import NEGATIVE, POSITIVE, sentiment_rows, write_csv
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app
from tunesmith.errors import ConfigError
from tunesmith.serving.server import ServeOptions, create_app
from tunesmith.tasks.base import task_class, task_names


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "predictions" / "test.jsonl").read_text().splitlines()]


def _reference_ig(model: Any, ids: torch.Tensor, base: torch.Tensor, extra: dict, score: Any,
                  steps: int = 400) -> np.ndarray:
    """Integrated gradients by hand: the midpoint rule over the word embeddings' straight path."""
    emb = model.get_input_embeddings()
    with torch.no_grad():
        ex, eb = emb(ids), emb(base)
    total = torch.zeros_like(ex)
    for k in range(steps):
        e = (eb + (k + 0.5) / steps * (ex - eb)).requires_grad_(True)
        out = score(model(inputs_embeds=e, **extra))
        total += torch.autograd.grad(out.sum(), e)[0]
    return ((ex - eb) * total / steps).sum(-1)[0].numpy()


def test_classification_attributions_are_integrated_gradients_per_word(contract_run: Any) -> None:
    predictor = tunesmith.load(contract_run("text-classification"))
    text = "the food was goods"  # "goods" is two WordPieces: good ##s
    out = predictor.explain(text)
    assert out["prediction"] == predictor.predict(text)
    label = out["prediction"]["label"]
    (name, att), = out["attributions"].items()
    assert name == label and out["steps"] == 50 and out["forward"].startswith("stock")
    assert [(w["word"], w["start"], w["end"]) for w in att["words"]] == [
        ("the", 0, 3), ("food", 4, 8), ("was", 9, 12), ("goods", 13, 18)]
    # the explained score is the predicted probability; completeness holds up to the reported delta
    assert math.isclose(att["score"], out["prediction"]["score"], abs_tol=1e-6)
    total = sum(w["attribution"] for w in att["words"])
    assert math.isclose(total - (att["score"] - att["baseline_score"]), att["delta"], abs_tol=1e-6)
    assert abs(att["delta"]) < 1e-3
    # the same numbers as integrated gradients computed by hand (baseline: [CLS] pad... [SEP])
    tok = predictor.tokenizer
    enc = tok(text, return_tensors="pt")
    ids = enc["input_ids"]
    base = torch.full_like(ids, tok.pad_token_id)
    base[0, 0], base[0, -1] = ids[0, 0], ids[0, -1]
    k = predictor.task.labels.index(label)
    extra = {"attention_mask": enc["attention_mask"], "token_type_ids": enc["token_type_ids"]}
    ref = _reference_ig(predictor.model, ids, base, extra, lambda o: o.logits.softmax(-1)[:, k])
    tokens = tok.convert_ids_to_tokens(ids[0])
    assert tokens == ["[CLS]", "the", "food", "was", "good", "##s", "[SEP]"]
    by_word = [ref[1], ref[2], ref[3], ref[4] + ref[5]]
    for w, r in zip(att["words"], by_word):
        assert math.isclose(w["attribution"], r, abs_tol=2e-4), (w, r)


def test_the_sentiment_word_gets_the_largest_attribution(base_config: dict, tmp_path: Path) -> None:
    """conftest's sentiment rows: the label is the text's one sentiment word, and the explanation of the
    predicted label puts its largest attribution on that word (measured: 39 of 40 texts; the other's
    probability is its all-pad baseline's, 0.668 against 0.666, so there is nothing to attribute)."""
    cfg = copy.deepcopy(base_config)
    cfg["data"]["test"] = str(write_csv(tmp_path / "test.csv", sentiment_rows(40, seed=7)))
    predictor = tunesmith.load(tunesmith.train(cfg).dir)
    found = 0
    for row in sentiment_rows(40, seed=7):
        (att,) = predictor.explain(row["text"])["attributions"].values()
        found += max(att["words"], key=lambda w: w["attribution"])["word"] in POSITIVE + NEGATIVE
    assert found >= 38, found


def test_another_label_and_the_speed_path_give_the_stock_forwards_attributions(contract_run: Any) -> None:
    run_dir = contract_run("text-classification")
    fast = tunesmith.load(run_dir)
    assert "forward" in fast.model.__dict__  # the fast BERT forward is installed (it declines under a hook)
    stock = tunesmith.load(run_dir)
    del stock.model.__dict__["forward"]
    text = "a lovely day and the service was bad"
    for target in ("neg", "pos"):
        a, b = fast.explain(text, target=target), stock.explain(text, target=target)
        assert list(a["attributions"]) == [target]
        for x, y in zip(a["attributions"][target]["words"], b["attributions"][target]["words"]):
            assert x["word"] == y["word"] and math.isclose(x["attribution"], y["attribution"], abs_tol=1e-6)
    with pytest.raises(ConfigError, match="'maybe' is not a label of this model; its labels: neg, pos"):
        fast.explain(text, target="maybe")


def test_ner_explains_each_predicted_entity(contract_run: Any) -> None:
    predictor = tunesmith.load(contract_run("token-classification"))
    tokens = ["the", "team", "and", "the", "senate", "felt", "good"]
    out = predictor.explain({"tokens": tokens})
    entities = out["prediction"]["entities"]
    assert entities, "the trained tiny model finds the topic words"
    assert list(out["attributions"]) == [f"{e['entity_group']}: {e['word']} [{e['start']}:{e['end']}]"
                                         for e in entities]
    assert out["not_explained"] == []
    for att in out["attributions"].values():
        assert [(w["word"], w["index"]) for w in att["words"]] == [(t, i) for i, t in enumerate(tokens)]
        total = sum(w["attribution"] for w in att["words"])
        assert math.isclose(total - (att["score"] - att["baseline_score"]), att["delta"], abs_tol=1e-6)
    # raw text: the same words, now with character offsets
    text = " ".join(tokens)
    raw = predictor.explain({"text": text})
    words = next(iter(raw["attributions"].values()))["words"]
    assert [text[w["start"]:w["end"]] for w in words] == tokens


def test_qa_explains_the_answers_start_and_end(contract_run: Any) -> None:
    run_dir = contract_run("question-answering")
    predictor = tunesmith.load(run_dir)
    record = {"question": "how was the food", "context": "the food was good and the day was long"}
    out = predictor.explain(record)
    assert out["prediction"]["answer"] == "good"
    assert list(out["attributions"]) == ["start", "end"] and out["window"] == 0
    for att in out["attributions"].values():
        roles = [w["role"] for w in att["words"]]
        assert roles == ["question"] * 4 + ["context"] * 9
        for w in att["words"]:
            assert record[w["role"]][w["start"]:w["end"]] == w["word"]
        total = sum(w["attribution"] for w in att["words"])
        assert math.isclose(total - (att["score"] - att["baseline_score"]), att["delta"], abs_tol=1e-5)


def test_tasks_without_explanations_say_so(contract_run: Any) -> None:
    explaining = sorted(t for t in task_names() if task_class(t).explains and task_class(t).name == t)
    assert explaining == ["question-answering", "text-classification", "token-classification"]
    run_dir = contract_run("text-generation")
    message = ("the text-generation task has no explanations; these tasks have: question-answering, "
               "text-classification, token-classification")
    with pytest.raises(ConfigError) as e:
        tunesmith.load(run_dir).explain("a prompt")
    assert str(e.value) == message
    result = CliRunner().invoke(app, ["predict", str(run_dir), "--text", "x", "--explain"])
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    with TestClient(create_app(ServeOptions(run_dir=str(run_dir)))) as client:
        client.app.state.loader.join()
        r = client.post("/explain", json={"inputs": "a prompt"})
        assert r.status_code == 404 and r.json()["detail"] == message


def test_the_cli_and_the_server_give_predictors_explanation(contract_run: Any) -> None:
    run_dir = contract_run("text-classification")
    expected = tunesmith.load(run_dir).explain("the show was awful", steps=20)
    result = CliRunner().invoke(app, ["predict", str(run_dir), "--text", "the show was awful", "--explain",
                                      "--steps", "20"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == expected
    with TestClient(create_app(ServeOptions(run_dir=str(run_dir)))) as client:
        client.app.state.loader.join()
        r = client.post("/explain", json={"inputs": "the show was awful", "steps": 20})
        assert r.status_code == 200 and r.json() == expected
        r = client.post("/explain", json={"inputs": "the show was awful", "target": "maybe"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "target"]
    refused = CliRunner().invoke(app, ["predict", str(run_dir), "--text", "x", "--target", "pos"])
    assert refused.exit_code == 2 and "--target and --steps are options of --explain" in refused.output
