"""`tunesmith serve`: the FastAPI app in-process (FastAPI's TestClient), the batcher on its own, and once a
real uvicorn process on loopback."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_task_contract import _same

import tunesmith
from tunesmith.serving.server import Batcher, Overloaded, ServeOptions, create_app


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "predictions" / "test.jsonl").read_text().splitlines()]


def _client(run_dir: Path, **options: Any) -> TestClient:
    app = create_app(ServeOptions(run_dir=str(run_dir), **options))
    return TestClient(app, raise_server_exceptions=False)


def _ready(client: TestClient) -> None:
    client.app.state.loader.join()  # the model loads in a background thread
    assert client.get("/health").json() == {"status": "ready"}


@pytest.mark.parametrize("task", ["text-classification", "token-classification", "question-answering",
                                  "text-generation"])
def test_a_served_answer_is_what_predict_gives(task: str, contract_run: Any) -> None:
    run_dir = contract_run(task)
    rows = _rows(run_dir)
    inputs = [r["input"] for r in rows]
    expected = tunesmith.load(run_dir).predict(inputs)
    with _client(run_dir, max_batch_size=4) as client:
        _ready(client)
        one = client.post("/predict", json={"inputs": inputs[0]})
        assert one.status_code == 200
        _same(one.json(), expected[0], task)
        many = client.post("/predict", json={"inputs": inputs})
        assert many.status_code == 200
        _same(many.json(), expected, task)


def test_health_metadata_and_docs(contract_run: Any) -> None:
    run_dir = contract_run("text-classification")
    saved = json.loads((run_dir / "model" / "tunesmith.json").read_text())
    app = create_app(ServeOptions(run_dir=str(run_dir)))
    gate = threading.Event()
    service = app.state.service
    load = service.load
    service.load = lambda: (gate.wait(), load())  # hold the model back: /health says it is loading
    with TestClient(app) as client:
        loading = client.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert client.post("/predict", json={"inputs": "good"}).status_code == 503
        gate.set()
        _ready(client)
        meta = client.get("/metadata").json()
        assert meta["task"] == "text-classification" and meta["labels"] == ["neg", "pos"]
        assert meta["model"]["files"] == saved["files"] and meta["model"]["max_length"] == 32
        assert meta["inputs"][0]["name"] == "text" and meta["explains"] is True
        assert client.get("/docs").status_code == 200
        assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_bad_requests_get_a_4xx_naming_the_field_and_the_server_keeps_serving(contract_run: Any) -> None:
    with _client(contract_run("question-answering"), max_body_bytes=4000, max_text_chars=300) as client:
        _ready(client)
        good = {"question": "how was the food", "context": "the food was good"}
        r = client.post("/predict", content=b'{"inputs": ', headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
        r = client.post("/predict", json={"input": good})
        assert r.status_code == 422 and {tuple(e["loc"]) for e in r.json()["detail"]} >= {("body", "inputs")}
        r = client.post("/predict", json={"inputs": [good, {"question": "how was it"}]})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "inputs", 1, "context"]
        assert r.json()["detail"][0]["msg"] == "empty context: nothing to predict (remove the row or fill it in)"
        r = client.post("/predict", json={"inputs": {**good, "contxt": "x"}})
        assert r.status_code == 422 and "did you mean 'context'" in r.json()["detail"][0]["msg"]
        r = client.post("/predict", json={"inputs": "a string"})  # QA reads two texts: a record is needed
        assert r.status_code == 422 and "question" in r.json()["detail"][0]["msg"]
        r = client.post("/predict", json={"inputs": good, "parameters": {"num_beams": 2}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "parameters", "num_beams"]
        r = client.post("/predict", json={"inputs": {**good, "context": "good " * 100}})
        assert r.status_code == 413 and "inputs.context has 500 characters" in r.json()["detail"]
        r = client.post("/predict", json={"inputs": [good] * 200})
        assert r.status_code == 413 and "4000 bytes" in r.json()["detail"]
        assert client.post("/predict", json={"inputs": good}).status_code == 200


def test_an_internal_error_is_a_500_with_an_id_in_the_log(contract_run: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with _client(contract_run("text-classification")) as client:
        _ready(client)
        service = client.app.state.service
        run = service.run
        service.run = lambda records, decoding: 1 / 0
        with caplog.at_level(logging.INFO, logger="tunesmith.serve"):
            r = client.post("/predict", json={"inputs": "good"})
        assert r.status_code == 500
        error_id = r.json()["id"]
        logged = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "tunesmith.serve.access"]
        assert logged[-1]["status"] == 500 and logged[-1]["error_id"] == error_id
        assert any(error_id in rec.getMessage() and "ZeroDivisionError" in rec.getMessage()
                   for rec in caplog.records if rec.name == "tunesmith.serve")
        service.run = run
        r = client.post("/predict", json={"inputs": ["good", "bad"]})
        assert r.status_code == 200 and len(r.json()) == 2
        with caplog.at_level(logging.INFO, logger="tunesmith.serve"):
            client.post("/predict", json={"inputs": ["good", "bad"]})
        line = json.loads([rec for rec in caplog.records if rec.name == "tunesmith.serve.access"][-1].getMessage())
        assert line["status"] == 200 and line["records"] == 2 and line["batch_size"] == 2 and line["latency_ms"] > 0


def test_generation_takes_decoding_parameters_per_request(contract_run: Any) -> None:
    run_dir = contract_run("text-generation")
    prompt = _rows(run_dir)[0]["input"]
    predictor = tunesmith.load(run_dir)
    predictor.set_decoding(max_new_tokens=1)
    expected = predictor.predict(prompt)
    with _client(run_dir) as client:
        _ready(client)
        r = client.post("/predict", json={"inputs": prompt, "parameters": {"max_new_tokens": 1}})
        assert r.status_code == 200 and r.json() == expected
        # the next request gets the run's own options back
        assert client.post("/predict", json={"inputs": prompt}).json() == tunesmith.load(run_dir).predict(prompt)
        r = client.post("/predict", json={"inputs": prompt, "parameters": {"max_new_tokens": -1}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "parameters", "max_new_tokens"]
        r = client.post("/predict", json={"inputs": prompt, "parameters": {"temprature": 1.0}})
        assert r.status_code == 422 and "not a decoding option" in r.json()["detail"][0]["msg"]


def _batcher(run: Any, **kw: Any) -> Batcher:
    return Batcher(run, kw.get("max_batch_size", 4), kw.get("max_wait_ms", 10_000), kw.get("max_queue", 100))


def test_the_batcher_joins_waiting_requests_up_to_the_batch_size() -> None:
    batches: list[list[str]] = []

    def run(records: list[dict], decoding: dict) -> list[dict]:
        batches.append([r["x"] for r in records])
        return [{"y": r["x"].upper()} for r in records]

    async def main() -> list:
        b = _batcher(run, max_batch_size=4)
        worker = asyncio.create_task(b.serve_forever())
        jobs = [b.submit([{"x": c} for c in word], {}) for word in ("ab", "c", "de", "f", "g")]
        out = await asyncio.gather(*jobs)
        worker.cancel()
        return out

    out = asyncio.run(main())
    # whole requests in arrival order, at most 4 records: ab+c (3; de would make 5), then de+f+g
    assert batches == [["a", "b", "c"], ["d", "e", "f", "g"]]
    assert out == [([{"y": "A"}, {"y": "B"}], 3), ([{"y": "C"}], 3), ([{"y": "D"}, {"y": "E"}], 4),
                   ([{"y": "F"}], 4), ([{"y": "G"}], 4)]


def test_the_batcher_keeps_decoding_options_apart_and_refuses_a_full_queue() -> None:
    started, release = threading.Event(), threading.Event()
    batches: list[tuple[list[int], dict]] = []

    def run(records: list[dict], decoding: dict) -> list[dict]:
        started.set()
        release.wait()
        batches.append(([r["i"] for r in records], decoding))
        return records

    async def main() -> None:
        b = _batcher(run, max_batch_size=8, max_wait_ms=0, max_queue=3)
        worker = asyncio.create_task(b.serve_forever())
        first = asyncio.create_task(b.submit([{"i": 0}], {}))
        await asyncio.to_thread(started.wait)  # the worker took it; it runs until released
        waiting = [asyncio.create_task(b.submit([{"i": i}], p)) for i, p in ((1, {}), (2, {"t": 1}), (3, {}))]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await b.submit([{"i": 4}], {})
        release.set()
        await asyncio.gather(first, *waiting)
        worker.cancel()

    asyncio.run(main())
    assert batches == [([0], {}), ([1, 3], {}), ([2], {"t": 1})]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_real_uvicorn_process_serves_on_loopback(contract_run: Any, tmp_path: Path, workers: int) -> None:
    """Each of `--workers N`'s processes builds the app from the options it is handed, access log included."""
    run_dir = contract_run("text-classification")
    port = _free_port()
    log = tmp_path / "access.jsonl"
    err = open(tmp_path / "stderr.txt", "w+")  # a file, not a pipe: an unread pipe that fills blocks the server
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", str(run_dir), "--port", str(port),
                             "--access-log", str(log), "--workers", str(workers)], stdout=subprocess.DEVNULL,
                            stderr=err, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to a minute for the imports and the model
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if json.load(r) == {"status": "ready"}:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            time.sleep(0.1)
        else:
            pytest.fail(f"the server was not ready within a minute:\n{(tmp_path / 'stderr.txt').read_text()}")
        texts = [r["input"]["text"] for r in _rows(run_dir)]
        req = urllib.request.Request(f"{base}/predict", data=json.dumps({"inputs": texts}).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            _same(json.load(r), tunesmith.load(run_dir).predict(texts), "served")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        err.close()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[-1]["path"] == "/predict" and lines[-1]["status"] == 200 and lines[-1]["records"] == len(texts)


def test_requests_with_other_roles_run_apart_and_a_failed_batch_runs_each_alone() -> None:
    """A batch's table has the columns of all its records: a record without text_pair beside one with it would
    read as an empty text_pair, so they never share a batch; and when a batch fails, each request runs alone,
    so one request's error is not another's."""
    batches: list[list[dict]] = []

    def run(records: list[dict], decoding: dict) -> list[dict]:
        batches.append(records)
        if any(r.get("text_pair") == "BAD" for r in records):
            raise ValueError("bad record")
        return records

    async def main() -> list:
        b = _batcher(run, max_batch_size=8, max_wait_ms=10_000)
        worker = asyncio.create_task(b.serve_forever())
        jobs = [b.submit([{"text": "a"}], {}), b.submit([{"text": "b", "text_pair": "c"}], {}),
                b.submit([{"text": "d"}], {}), b.submit([{"text": "e", "text_pair": "BAD"}], {})]
        out = await asyncio.gather(*jobs, return_exceptions=True)
        worker.cancel()
        return out

    out = asyncio.run(main())
    b, e = {"text": "b", "text_pair": "c"}, {"text": "e", "text_pair": "BAD"}
    assert batches == [[{"text": "a"}, {"text": "d"}], [b, e], [b], [e]]
    assert out[:3] == [([{"text": "a"}], 2), ([b], 1), ([{"text": "d"}], 2)] and isinstance(out[3], ValueError)


def test_a_job_waits_max_wait_ms_from_its_arrival_not_from_when_the_model_is_free() -> None:
    """A request that waited while the model ran the batch before it has used up its wait: it runs at once.
    (An hour's max_wait_ms: counted from when the worker looks, the batch would not run within the test.)"""
    ran: list[list[str]] = []

    async def main() -> Any:
        b = _batcher(lambda records, decoding: ran.append([r["x"] for r in records]) or records,
                     max_batch_size=8, max_wait_ms=3_600_000)
        job = asyncio.create_task(b.submit([{"x": "a"}], {}))
        await asyncio.sleep(0)  # queued; no worker yet
        b.pending[0].arrived -= 3_600  # it arrived an hour ago (the model was busy)
        worker = asyncio.create_task(b.serve_forever())
        out = await asyncio.wait_for(job, 60)
        worker.cancel()
        return out

    assert asyncio.run(main()) == ([{"x": "a"}], 1) and ran == [["a"]]


def test_explanations_and_streams_count_in_the_queue_bound() -> None:
    release = threading.Event()

    async def main() -> None:
        b = _batcher(lambda records, decoding: records, max_queue=2)
        one = b.exclusive(release.wait)
        with pytest.raises(Overloaded):
            await b.submit([{"x": 1}, {"x": 2}], {})  # 1 + 2 records > 2: refused before it is queued
        two = b.exclusive(release.wait)
        with pytest.raises(Overloaded):
            b.exclusive(release.wait)
        assert b.queued == 2
        release.set()
        await asyncio.gather(one, two)
        assert b.queued == 0

    asyncio.run(main())


def test_limits_that_cannot_work_together_are_refused_at_startup(contract_run: Any) -> None:
    from tunesmith.errors import ConfigError

    run_dir = str(contract_run("text-classification"))
    with pytest.raises(ConfigError, match="--max-queue 10 is below --max-records 256"):
        create_app(ServeOptions(run_dir=run_dir, max_queue=10))
    with pytest.raises(ConfigError, match="--max-batch-size 0"):
        create_app(ServeOptions(run_dir=run_dir, max_batch_size=0))


def _events(body: str) -> list[tuple[str, Any]]:
    """(event, data) of a text/event-stream body."""
    out = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_generation_streams_its_text_as_server_sent_events(contract_run: Any) -> None:
    """The pieces joined are the text that predict gives, and the last event is predict's record; Python's
    Predictor.stream calls back with the same pieces."""
    run_dir = contract_run("text-generation")
    prompt = _rows(run_dir)[0]["input"]
    predictor = tunesmith.load(run_dir)
    expected = predictor.predict(prompt)
    pieces: list[str] = []
    assert predictor.stream(prompt, pieces.append) == expected
    assert len(pieces) > 1 and "".join(pieces).strip() == expected["generated_text"]
    with _client(run_dir) as client:
        _ready(client)
        assert client.get("/metadata").json()["streams"] is True
        r = client.post("/stream", json={"inputs": prompt})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.text)
        assert events[-1] == ("done", expected)
        assert [data["text"] for kind, data in events[:-1]] == pieces and {k for k, _ in events[:-1]} == {"text"}
        predictor.set_decoding(max_new_tokens=2)
        short = _events(client.post("/stream", json={"inputs": prompt, "parameters": {"max_new_tokens": 2}}).text)
        assert short[-1] == ("done", predictor.predict(prompt))
        r = client.post("/stream", json={"inputs": [prompt]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "inputs"]
        r = client.post("/stream", json={"inputs": prompt, "parameters": {"max_new_tokens": 0}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "parameters", "max_new_tokens"]
        assert _events(client.post("/stream", json={"inputs": prompt}).text)[-1] == ("done", expected)


def test_beam_search_and_tasks_that_do_not_generate_do_not_stream(contract_run: Any) -> None:
    from tunesmith.errors import ConfigError

    run_dir = contract_run("translation")
    record = _rows(run_dir)[0]["input"]
    predictor = tunesmith.load(run_dir)
    predictor.set_decoding(num_beams=2)
    with pytest.raises(ConfigError, match="num_beams is 2"):
        predictor.stream(record, print)
    with _client(run_dir) as client:
        _ready(client)
        r = client.post("/stream", json={"inputs": record, "parameters": {"num_beams": 2}})
        assert r.status_code == 422 and "num_beams is 2" in r.json()["detail"][0]["msg"]
        done = _events(client.post("/stream", json={"inputs": record}).text)[-1]
        assert done == ("done", tunesmith.load(run_dir).predict(record))
    with _client(contract_run("text-classification")) as client:
        _ready(client)
        assert client.get("/metadata").json()["streams"] is False
        assert client.post("/stream", json={"inputs": "good"}).status_code == 404
