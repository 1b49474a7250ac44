"""tunesmith: fine-tune pretrained Transformer models on your own NLP task."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .run import Run
    from .hpsearch import SearchResult
    from .serving.predictor import Predictor


def train(config: Any, overrides: list[str] | dict | None = None, **kwargs: Any) -> "Run":
    """Fine-tune from a YAML path, dict or RunConfig; overrides: ["train.lr=3e-5"] or {"train.lr": 3e-5}."""
    from .run import train as _train
    return _train(config, overrides, **kwargs)


def search(config: Any, overrides: list[str] | dict | None = None, **kwargs: Any) -> "SearchResult":
    """Run a config's search section (see tunesmith.hpsearch.run_search); returns the leaderboard and best trial."""
    from .hpsearch import run_search
    return run_search(config, overrides, **kwargs)


def check_labels(config: Any, overrides: list[str] | dict | None = None, output: Any = None) -> list[dict]:
    """The training rows most likely mislabelled, most likely first (see tunesmith.label_issues); also
    written to `output` (default label_issues.jsonl) as JSON lines."""
    from .label_issues import check_labels as _check
    return _check(config, overrides, output)


def load(run_dir: Any) -> "Predictor":
    """A Predictor on a finished run folder (or its model/ subfolder), loaded without the libraries' chatter."""
    from .serving.predictor import Predictor

    return Predictor.load(run_dir)
