"""Token attributions: Captum's `LayerIntegratedGradients` on a model's input embedding layer, summed per
word, with each word's character offsets in the text it came from.

The baseline is the same input with every token that is not a special token ([CLS], [SEP], <s>) replaced by
the pad token, attended as the input is: attributions then say what each word adds over "no words here",
and their sum approximates score(input) - score(baseline) (completeness). Captum's convergence delta is the
sum minus that difference; a large delta means more steps are needed. The attribution runs with a forward
hook on the embedding layer, and every speed path tunesmith has declines under a hook (fast_bert: see its
module docstring), so it is always the model's stock forward that is explained.

A task that explains itself (`Task.explains`) encodes one record into an `Encoded` and names the scores to
explain (functions of the model's output); this module does the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

DEFAULT_STEPS = 50  # integration steps (Gauss-Legendre): the convergence delta of a MiniLM classifier is ~1e-3
FORWARD = "stock (Captum's hook on the embedding layer switches every speed path off)"


@dataclass
class Encoded:
    """One record as the model reads it. `words[j]` places token j: (role, word key, start, end) with
    character offsets into `texts[role]` (a string), or into the word list `texts[role]` (key = word index,
    start/end unused); None for special tokens."""

    inputs: dict[str, torch.Tensor]  # a batch of one
    words: list[tuple[str, int, int, int] | None]
    texts: dict[str, Any]
    special: list[bool]


def _baseline(encoded: Encoded, tokenizer: Any) -> torch.Tensor:
    """The input with its non-special tokens replaced by the pad token (else unk, else id 0)."""
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.unk_token_id) if t is not None), 0)
    ids = encoded.inputs["input_ids"].clone()
    keep = torch.tensor(encoded.special, dtype=torch.bool, device=ids.device)
    ids[0, ~keep] = pad
    return ids


def integrated_gradients(model: torch.nn.Module, tokenizer: Any, encoded: Encoded,
                         score: Callable[[Any], torch.Tensor],
                         steps: int = DEFAULT_STEPS) -> tuple[np.ndarray, float, float, float]:
    """(attribution per token, convergence delta, score of the input, score of the baseline) of `score`, a
    function of the model's output giving one value per batch row."""
    from captum.attr import LayerIntegratedGradients

    names = [k for k in encoded.inputs if k != "input_ids"]

    def forward(input_ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        extra = {k: v.expand(input_ids.shape[0], *v.shape[1:]) for k, v in zip(names, rest)}
        return score(model(input_ids=input_ids, **extra))

    model.eval()
    ids, base = encoded.inputs["input_ids"], _baseline(encoded, tokenizer)
    rest = tuple(encoded.inputs[k] for k in names)
    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    attr, delta = lig.attribute(ids, baselines=base, additional_forward_args=rest, n_steps=steps,
                                internal_batch_size=min(steps, 16), return_convergence_delta=True)
    with torch.no_grad():
        at_input, at_base = float(forward(ids, *rest)[0]), float(forward(base, *rest)[0])
    return attr.sum(-1)[0].detach().float().cpu().numpy(), float(delta[0]), at_input, at_base


def word_attributions(encoded: Encoded, token_scores: np.ndarray) -> list[dict[str, Any]]:
    """Token attributions summed per word, in reading order: {role, word, start, end, attribution} for a
    text (character offsets), {role, word, index, attribution} for a list of words."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for j, place in enumerate(encoded.words):
        if place is None:
            continue
        role, key, start, end = place
        w = out.get((role, key))
        if w is None:
            w = out[(role, key)] = {"role": role, "start": start, "end": end, "attribution": 0.0}
        w["start"], w["end"] = min(w["start"], start), max(w["end"], end)
        w["attribution"] += float(token_scores[j])
    words = []
    for (role, key), w in out.items():
        text = encoded.texts[role]
        if isinstance(text, str):
            words.append({"role": role, "word": text[w["start"]:w["end"]], "start": w["start"], "end": w["end"],
                          "attribution": w["attribution"]})
        else:
            words.append({"role": role, "word": text[key], "index": key, "attribution": w["attribution"]})
    return words


def explain(model: torch.nn.Module, tokenizer: Any, encoded: Encoded,
            scores: dict[str, Callable[[Any], torch.Tensor]], steps: int = DEFAULT_STEPS) -> dict[str, Any]:
    """One attribution per named score: {name: {words, delta, score, baseline_score}}, and how it ran."""
    out = {}
    for name, score in scores.items():
        tokens, delta, at_input, at_base = integrated_gradients(model, tokenizer, encoded, score, steps)
        out[name] = {"words": word_attributions(encoded, tokens), "delta": delta, "score": at_input,
                     "baseline_score": at_base}
    return {"method": "layer_integrated_gradients", "layer": "input embeddings", "baseline": "pad tokens",
            "steps": steps, "forward": FORWARD, "attributions": out}


def text_words(role: str, sequence: int, offsets: list[tuple[int, int]], sequence_ids: list[int | None],
               word_ids: list[int | None]) -> list[tuple[str, int, int, int] | None]:
    """`Encoded.words` entries of the tokens of one text in a (fast) tokenizer's encoding: the tokens of
    `sequence` (0 or 1 of a pair) get (role, word, start, end); the others None."""
    return [(role, w, s, e) if q == sequence and w is not None else None
            for (s, e), q, w in zip(offsets, sequence_ids, word_ids)]
