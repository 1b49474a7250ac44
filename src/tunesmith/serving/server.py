"""`tunesmith serve`: a run's Predictor over HTTP (FastAPI + uvicorn), with dynamic batching.

One prediction path: a request's records are checked the way `predict` checks a file's rows, queued, and run
through the same `Predictor.predict` (windows, decoding and all) together with the requests that arrived
within `max_wait_ms`, at most `max_batch_size` records at a time. The model runs in one thread (a model is
not safe to call from several at once), so the event loop keeps answering /health and refusing overload
while a batch runs. What is queued is bounded in records, and every record in characters, so memory stays
bounded: a full queue is a 503 at once, a body or text over the limits a 413, a bad record a 422 naming its
field, and an unexpected error a 500 with an id that the log repeats; the server keeps serving after each.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, DataError, TunesmithError
from .inputs import check_decoding, no_explanations, read_run_state

ENV_OPTIONS = "TUNESMITH_SERVE_OPTIONS"  # how `serve --workers N` hands its options to each worker process
access_log = logging.getLogger("tunesmith.serve.access")


@dataclass
class ServeOptions:
    """What `tunesmith serve` is given; `max_batch_size` 1 serves every request alone (batching off)."""

    run_dir: str
    device: Optional[str] = None
    backend: str = "pytorch"
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024  #: records waiting for the model; one more is a 503
    max_records: int = 256  #: records in one request
    max_body_bytes: int = 1_000_000
    max_text_chars: int = 20_000  #: characters of any one text in a record (a long text is windowed, not cut)
    explain_steps: int = 50
    access_log_file: Optional[str] = None  #: where the JSON access-log lines go (default: stderr)

    def check(self) -> None:
        """A ConfigError naming the `serve` option for limits that cannot work together."""
        for name in ("max_batch_size", "max_queue", "max_records", "max_body_bytes", "max_text_chars",
                     "explain_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: it must be at least 1")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms {self.max_wait_ms}: it must be 0 or more")
        if self.max_queue < self.max_records:
            raise ConfigError(f"--max-queue {self.max_queue} is below --max-records {self.max_records}: a request "
                              "of that many records could never be queued; raise --max-queue or lower --max-records")


class PredictRequest(BaseModel):
    """`{"inputs": ..., "parameters": {...}}`, the shape of the Hugging Face Inference API: one input (a
    string for a task that reads one text, else a record of the task's roles) or a list of them."""

    model_config = ConfigDict(extra="forbid")
    inputs: Union[str, dict[str, Any], list[Union[str, dict[str, Any]]]]
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="decoding options of a task that generates (GET /metadata)")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: Union[str, dict[str, Any]]
    target: Optional[str] = Field(None, description="the label to explain (default: the predicted one)")
    steps: Optional[int] = Field(None, ge=1, le=1000, description="integration steps (default: the server's)")


class StreamRequest(BaseModel):
    """`{"inputs": ..., "parameters": {...}}` of /predict, for one input."""

    model_config = ConfigDict(extra="forbid")
    inputs: Union[str, dict[str, Any]]
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="decoding options (GET /metadata); num_beams must be 1")


class Overloaded(Exception):
    """The queue holds as many records as it may: the request is refused at once (503)."""


@dataclass
class _Job:
    records: list[dict]
    decoding: tuple
    future: asyncio.Future
    arrived: float  #: the event loop's clock when it was queued: it waits `max_wait_ms` from then, not longer
    batch_size: int = 0


@dataclass
class Batcher:
    """Runs queued requests' records together: the first waiting job waits at most `max_wait_ms` for others
    with the same decoding options, then up to `max_batch_size` records (whole requests, in arrival order
    up to the first that does not fit; a request larger than that runs alone) go to `run` in the model
    thread."""

    run: Callable[[list[dict], dict], list[dict]]
    max_batch_size: int
    max_wait_ms: float
    max_queue: int
    pending: deque = field(default_factory=deque)
    queued: int = 0
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "tunesmith-model"))

    def __post_init__(self) -> None:
        self.wake = asyncio.Event()

    async def submit(self, records: list[dict], decoding: dict) -> tuple[list[dict], int]:
        """(the records' predictions, the size of the batch they ran in); Overloaded when the queue is full."""
        if self.queued + len(records) > self.max_queue:
            raise Overloaded(f"the queue holds {self.queued} records (at most {self.max_queue}); try again shortly")
        # requests run together only with the same decoding options and the same roles given: a batch's
        # table has the columns of all its records, so a record without text_pair next to one with it would
        # read as an empty text_pair
        key = (tuple(sorted(decoding.items())), tuple(sorted({k for r in records for k in r})))
        loop = asyncio.get_running_loop()
        job = _Job(records, key, loop.create_future(), loop.time())
        self.pending.append(job)
        self.queued += len(records)
        self.wake.set()
        return await job.future, job.batch_size

    def exclusive(self, fn: Callable[[], Any]) -> asyncio.Future:
        """Run `fn` alone in the model thread (an explanation, a streamed generation), counted as one record
        of the queue while it waits and runs, so these requests are bounded too. Overloaded at once (before
        anything is queued) when the queue is full; else the future of `fn`'s result."""
        if self.queued + 1 > self.max_queue:
            raise Overloaded(f"the queue holds {self.queued} records (at most {self.max_queue}); try again shortly")
        self.queued += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn)

        def done(_: asyncio.Future) -> None:
            self.queued -= 1

        future.add_done_callback(done)
        return future

    def _batch(self) -> list[_Job]:
        first = self.pending[0]
        jobs, n = [], 0
        for job in self.pending:
            if job.decoding != first.decoding:
                continue
            if jobs and n + len(job.records) > self.max_batch_size:
                break  # the next request that does not fit waits for the next batch: none overtakes it
            jobs.append(job)
            n += len(job.records)
        return jobs

    def _ready(self) -> bool:
        first = self.pending[0]
        return sum(len(j.records) for j in self.pending if j.decoding == first.decoding) >= self.max_batch_size

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self.wake.clear()
                await self.wake.wait()
            deadline = self.pending[0].arrived + self.max_wait_ms / 1000
            while not self._ready() and (left := deadline - loop.time()) > 0:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            jobs = self._batch()
            for job in jobs:
                self.pending.remove(job)
            records = [r for job in jobs for r in job.records]
            self.queued -= len(records)
            decoding = dict(jobs[0].decoding[0])
            try:
                preds = await loop.run_in_executor(self.executor, self.run, records, decoding)
            except Exception as e:  # noqa: BLE001 - each request then runs alone and gets its own answer
                if len(jobs) == 1:
                    if not jobs[0].future.done():
                        jobs[0].future.set_exception(e)
                    continue
                for job in jobs:
                    await self._alone(job, decoding)
                continue
            k = 0
            for job in jobs:
                job.batch_size = len(records)
                if not job.future.done():  # a client that went away cancelled its future
                    job.future.set_result(preds[k:k + len(job.records)])
                k += len(job.records)

    async def _alone(self, job: _Job, decoding: dict) -> None:
        """Run one request by itself (after its batch failed), so an error reaches only the request it is in."""
        try:
            preds = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, job.records, decoding)
        except Exception as e:  # noqa: BLE001 - the request's own error (a 500 with its id)
            if not job.future.done():
                job.future.set_exception(e)
            return
        job.batch_size = len(job.records)
        if not job.future.done():
            job.future.set_result(preds)


def _error(code: int, message: str, **extra: Any) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": message, **extra}, status_code=code)


def _field_error(loc: list, message: str) -> Any:
    """A 422 in FastAPI's own shape, naming the field."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": [{"type": "value_error", "loc": loc, "msg": message}]}, status_code=422)


INTERNAL_ERROR = "internal error; the server log has its traceback under this id"


def _log_error(e: BaseException, where: str) -> str:
    """Log an unexpected error with its traceback under a new id, which the answer repeats."""
    error_id = uuid.uuid4().hex[:12]
    logging.getLogger("tunesmith.serve").error("error %s on %s:\n%s", error_id, where,
                                               "".join(traceback.format_exception(type(e), e, e.__traceback__)))
    return error_id


class _Guard:
    """ASGI middleware: a body over `max_body_bytes` is a 413 before it is read whole, and every request
    gets one JSON access-log line (method, path, status, latency, batch size)."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from fastapi import HTTPException

        started, status, responding = time.perf_counter(), [500], [False]
        scope.setdefault("state", {})
        limit, seen = self.max_body_bytes, [0]
        too_large = f"the request body is over the server's limit of {limit} bytes (serve --max-body-bytes)"

        async def guarded_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise HTTPException(413, too_large)
            return message

        async def logged_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0], responding[0] = message["status"], True
            await send(message)

        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                await _error(413, too_large)(scope, receive, logged_send)
            else:
                await self.app(scope, guarded_receive, logged_send)
        except Exception as e:  # noqa: BLE001 - a bug answers this request with a 500 and its id, nothing more
            error_id = _log_error(e, f"{scope.get('method')} {scope.get('path')}")
            scope["state"]["error_id"] = error_id
            status[0] = 500
            if not responding[0]:
                await _error(500, INTERNAL_ERROR, id=error_id)(scope, receive, logged_send)
        finally:
            state = scope["state"]
            access_log.info(json.dumps({
                "time": round(time.time(), 3), "method": scope.get("method"), "path": scope.get("path"),
                "status": status[0], "latency_ms": round(1000 * (time.perf_counter() - started), 2),
                "records": state.get("records"), "batch_size": state.get("batch_size"),
                **({"error_id": state["error_id"]} if "error_id" in state else {})}))


class Service:
    """The model behind the app: loaded in a background thread (GET /health says "loading" until it is)."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.state = read_run_state(options.run_dir)  # a wrong folder fails before the server starts
        self.task = self.state.task
        self.predictor: Any = None
        self.error: str | None = None
        self.batcher: Batcher | None = None
        self.defaults = {name: getattr(self.task.opts, name) for name in self.task.decoding}

    def load(self) -> None:
        try:
            from .predictor import Predictor

            self.predictor = Predictor.load(self.options.run_dir, self.options.device, self.options.backend)
        except Exception as e:  # noqa: BLE001 - reported by /health and the log, not a crash of the server
            self.error = f"{type(e).__name__}: {e}"
            logging.getLogger("tunesmith.serve").error("the model did not load: %s", self.error)

    @contextmanager
    def decoding(self, options: dict) -> Iterator[None]:
        """The request's decoding options over the run's own, for one call in the model thread."""
        try:
            for name, value in options.items():
                setattr(self.predictor.task.opts, name, value)
            yield
        finally:
            for name, value in self.defaults.items():
                setattr(self.predictor.task.opts, name, value)

    def run(self, records: list[dict], decoding: dict) -> list[dict]:
        """One batch through `Predictor.predict`, with the batch's decoding options."""
        with self.decoding(decoding):
            return self.predictor.predict(records, batch_size=self.options.max_batch_size)

    def stream(self, record: dict, decoding: dict, on_text: Callable[[str], None]) -> dict:
        """One input through `Predictor.stream`, with the request's decoding options."""
        with self.decoding(decoding):
            return self.predictor.stream(record, on_text)

    def metadata(self) -> dict[str, Any]:
        from .inputs import input_roles

        cfg, summary = self.state.cfg, self.task.summary()
        return {
            "task": self.task.name, "labels": summary.get("labels"), "summary": summary,
            "inputs": [{"name": r.name, "kind": r.kind, "required": r.required, "doc": r.doc}
                       for r in input_roles(self.task)],
            "model": {"base": cfg.model.name, "files": self.state.saved.get("files"),
                      "max_length": cfg.model.max_length},
            "decoding": self.defaults, "backend": self.options.backend,
            "explains": self.task.explains and self.options.backend == "pytorch",
            "streams": self.task.generates and self.options.backend == "pytorch",
            "batching": {"max_batch_size": self.options.max_batch_size, "max_wait_ms": self.options.max_wait_ms,
                         "max_queue": self.options.max_queue},
            "limits": {"max_records": self.options.max_records, "max_body_bytes": self.options.max_body_bytes,
                       "max_text_chars": self.options.max_text_chars},
        }


def _long_text(records: list[dict], limit: int, single: bool) -> tuple[list, int] | None:
    """(the field, its length) of the first text over `limit` characters, or None."""
    for i, record in enumerate(records):
        for key, value in record.items():
            texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            n = sum(len(t) for t in texts if isinstance(t, str))
            if n > limit:
                return ["body", "inputs", *([] if single else [i]), key], n
    return None


def create_app(options: ServeOptions, load_first: bool = False) -> Any:
    """The FastAPI app for one run folder (tests call it directly; `serve` hands it to uvicorn). The model
    loads in the background while /health says "loading"; `load_first`: the app starts (and so takes
    connections) only once it is loaded, as each of `--workers N`'s processes must, or a request that the
    shared socket hands to a worker still loading would get a 503 while another worker says ready."""
    options.check()
    service = Service(options)
    schema = service.task.prediction_schema()

    async def lifespan(app: Any) -> Any:
        loop = asyncio.get_running_loop()
        service.batcher = Batcher(lambda records, decoding: service.run(records, decoding),
                                  options.max_batch_size, options.max_wait_ms, options.max_queue)
        loader = threading.Thread(target=service.load, name="tunesmith-load", daemon=True)
        loader.start()
        if load_first:
            await asyncio.to_thread(loader.join)
        worker = loop.create_task(service.batcher.serve_forever())
        app.state.loader = loader
        yield
        worker.cancel()
        service.batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"tunesmith: {service.task.name}", lifespan=lifespan,
                  description=f"The model of the run {Path(options.run_dir).resolve().name}, served by tunesmith.")
    app.state.service = service
    app.add_middleware(_Guard, max_body_bytes=options.max_body_bytes)

    def not_ready() -> Any:
        if service.error:
            return _error(503, f"the model failed to load: {service.error}")
        return _error(503, "the model is still loading; GET /health says when it is ready")

    def checked(request: Request, inputs: Any, single: bool,
                parameters: dict | None = None) -> tuple[list[dict], Any]:
        """(the request's records, None) or (None, the error response); `parameters`: decoding options."""
        for name, value in (parameters or {}).items():
            try:
                check_decoding(service.task, name, value, f"parameters.{name}={value!r}")
            except ConfigError as e:
                return [], _field_error(["body", "parameters", name], str(e))
        items = [inputs] if single else inputs
        if not items:
            return [], _field_error(["body", "inputs"], "an empty list: nothing to predict")
        if len(items) > options.max_records:
            return [], _error(413, f"{len(items)} inputs in one request; the server takes at most "
                                   f"{options.max_records} (serve --max-records)")
        try:
            records = service.predictor.records(items)
        except TypeError as e:
            return [], _field_error(["body", "inputs"], str(e))
        long = _long_text(records, options.max_text_chars, single)
        if long:
            loc, n = long
            return [], _error(413, f"{'.'.join(map(str, loc[1:]))} has {n} characters; the server takes at most "
                                   f"{options.max_text_chars} per text (serve --max-text-chars)")
        try:
            service.predictor.check(records, "request")
        except DataError as e:
            where = ([] if single else [e.line - 1]) if e.line else []
            message = e.message + (f" ({e.hint})" if e.hint else "")
            return [], _field_error(["body", "inputs", *where, *([e.column] if e.column else [])], message)
        request.scope["state"]["records"] = len(records)
        return records, None

    @app.get("/health")
    async def health() -> Any:
        """200 {"status": "ready"} once the model is loaded; 503 while it loads or when it failed to."""
        if service.predictor is None:
            return _error(503, service.error or "loading", status="failed" if service.error else "loading")
        return {"status": "ready"}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        """The task, its labels and inputs, the model's file hashes, max_length, decoding defaults, limits."""
        return service.metadata()

    @app.post("/predict", response_model=Union[schema, list[schema]],  # type: ignore[valid-type]
              response_model_exclude_unset=True)  # the record as predict writes it, no added nulls
    async def predict(body: PredictRequest, request: Request) -> Any:
        """The task's prediction record for one input, or a list of them for a list (the records that
        `tunesmith predict` writes)."""
        if service.predictor is None:
            return not_ready()
        single = not isinstance(body.inputs, list)
        records, refused = checked(request, body.inputs, single, body.parameters)
        if refused is not None:
            return refused
        try:
            preds, batch_size = await service.batcher.submit(records, body.parameters)
        except Overloaded as e:
            return _error(503, str(e))
        except TunesmithError as e:  # the model refused what the checks let through: the request's fault
            return _field_error(["body", "inputs"], str(e))
        request.scope["state"]["batch_size"] = batch_size
        return preds[0] if single else preds

    @app.post("/explain")
    async def explain(body: ExplainRequest, request: Request) -> Any:
        """Token attributions for one input's prediction (Predictor.explain), words with character offsets."""
        if service.predictor is None:
            return not_ready()
        if not service.task.explains:
            return _error(404, str(no_explanations(service.task)))
        if options.backend != "pytorch":
            return _error(409, f"explanations need gradients, which the {options.backend} backend has not; "
                               "serve with --backend pytorch")
        records, refused = checked(request, body.inputs, True)
        if refused is not None:
            return refused
        steps = body.steps or options.explain_steps
        try:
            return await service.batcher.exclusive(lambda: service.predictor.explain(
                records[0], target=body.target, steps=steps))
        except Overloaded as e:
            return _error(503, str(e))
        except TunesmithError as e:
            return _field_error(["body", "target"], str(e))

    @app.post("/stream")
    async def stream(body: StreamRequest, request: Request) -> Any:
        """Server-sent events for one input of a task that generates: `event: text` with {"text": a piece} as
        the model decodes, then `event: done` with the prediction record (what /predict answers), or `event:
        error` with an id the log repeats. A request the model refuses before its first piece is a 422."""
        if service.predictor is None:
            return not_ready()
        if not service.task.generates:
            return _error(404, f"{service.task.name} does not generate text: nothing to stream; POST /predict")
        records, refused = checked(request, body.inputs, True, body.parameters)
        if refused is not None:
            return refused
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def on_text(text: str) -> None:  # in the model thread
            loop.call_soon_threadsafe(pieces.put_nowait, text)

        try:
            future = service.batcher.exclusive(lambda: service.stream(records[0], body.parameters, on_text))
        except Overloaded as e:
            return _error(503, str(e))
        # the future's end is queued after every piece the model thread queued before it returned
        future.add_done_callback(pieces.put_nowait)
        first = await pieces.get()
        if isinstance(first, asyncio.Future) and first.exception() is not None:  # nothing streamed yet
            if isinstance(first.exception(), TunesmithError):
                return _field_error(["body", "parameters"], str(first.exception()))
            raise first.exception()  # a 500 with its id (_Guard)
        request.scope["state"]["batch_size"] = 1

        async def events() -> Any:
            item = first
            while True:
                if not isinstance(item, asyncio.Future):
                    yield _event("text", {"text": item})
                elif item.exception() is None:
                    yield _event("done", item.result())
                    return
                else:
                    yield _event("error", {"detail": INTERNAL_ERROR, "id": _log_error(item.exception(),
                                                                                        "POST /stream")})
                    return
                item = await pieces.get()

        from fastapi.responses import StreamingResponse

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    return app


def _event(kind: str, data: Any) -> str:
    """One server-sent event."""
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _log_to(access_log_file: str | None) -> None:
    """Access-log lines to `access_log_file` (appended: the workers of `--workers N` share it) or stderr,
    server errors to stderr; once per process."""
    if access_log.handlers:
        return
    handler = logging.FileHandler(access_log_file) if access_log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    logging.getLogger("tunesmith.serve").addHandler(logging.StreamHandler(sys.stderr))


def app_from_environment() -> Any:
    """The app of the options in TUNESMITH_SERVE_OPTIONS: each of `serve --workers N`'s processes builds it."""
    options = ServeOptions(**json.loads(os.environ[ENV_OPTIONS]))
    _log_to(options.access_log_file)
    return create_app(options, load_first=True)


def serve(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the server (blocking)."""
    import uvicorn

    options.check()
    read_run_state(options.run_dir)  # a folder that is not a run is an error here, not in every worker
    from .predictor import BACKENDS

    if options.backend not in BACKENDS:
        raise ConfigError(f"--backend {options.backend!r}: choose one of {', '.join(BACKENDS)}")
    if options.backend != "pytorch":
        from .onnx_backend import onnx_file

        onnx_file(options.run_dir, quantized=options.backend == "onnx-int8")
    config = {"host": host, "port": port, "access_log": False, "log_level": "info"}
    if workers > 1:
        os.environ[ENV_OPTIONS] = json.dumps(asdict(options))
        uvicorn.run("tunesmith.serving.server:app_from_environment", factory=True, workers=workers, **config)
    else:
        _log_to(options.access_log_file)
        uvicorn.run(create_app(options), **config)
