"""Metrics of generated text against one or more references: sacreBLEU (BLEU, chrF) and ROUGE (rouge-score).

Scores are on the 0-100 scale both libraries' reference recipes print (the Hugging Face translation and
summarization examples report these same numbers).
"""
from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _streams(references: list[list[str]]) -> list[list[str | None]]:
    """Per-example reference lists as sacreBLEU's reference streams; examples with fewer references get None."""
    width = max((len(r) for r in references), default=0)
    return [[r[k] if k < len(r) else None for r in references] for k in range(width)]


def bleu_chrf(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU (13a tokenisation, sacreBLEU's default) and chrF over every example."""
    import sacrebleu

    streams = _streams(references)
    return {"bleu": float(sacrebleu.corpus_bleu(hypotheses, streams).score),
            "chrf": float(sacrebleu.corpus_chrf(hypotheses, streams).score)}


def sentences_per_line(text: str) -> str:
    """One sentence per line, which rougeLsum reads as summary-level units. The summarization example uses
    nltk's sent_tokenize; this splits after . ! ? followed by white space (no nltk dependency for one split)."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean ROUGE F-measure x 100 with Porter stemming; several references: the best one per example."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, refs in zip(hypotheses, references):
        scores = scorer.score_multi([sentences_per_line(r) for r in refs], sentences_per_line(hyp))
        for k in ROUGE_TYPES:
            totals[k] += scores[k].fmeasure
    n = max(1, len(hypotheses))
    return {k: 100.0 * v / n for k, v in totals.items()}


def lowest_chrf(rows: list[dict], k: int, output_key: str) -> list[dict]:
    """report.html views of the k test outputs with the lowest sentence chrF against their references
    (predictions/test.jsonl rows whose gold is a reference or a list of them), lowest first."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    scored = []
    for r in rows:
        gold, out = r["gold"], r["prediction"].get(output_key)
        refs = [gold] if isinstance(gold, str) else [g for g in (gold or []) if isinstance(g, str)]
        if out is None or not refs:
            continue
        scored.append((chrf.sentence_score(out, refs).score, r, refs, out))
    scored.sort(key=lambda x: x[0])
    return [{"title": f"chrF {score:.1f}", "row": r, "input": r["input"],
             "fields": [*({"name": role, "text": str(v)} for role, v in r["input"].items() if isinstance(v, str)),
                        *({"name": "reference", "text": ref} for ref in refs),
                        {"name": "output", "text": out}]}
            for score, r, refs, out in scored[:k]]
