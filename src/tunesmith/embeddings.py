"""Sentence embeddings of a table's rows, for the parts of tunesmith that compare rows rather than classify
them: finding label errors (tunesmith.label_issues) and picking diverse rows to label (serving.suggest)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .console import quiet_libraries
from .types import Table

if TYPE_CHECKING:
    from .tasks.base import Task


def row_texts(task: "Task", table: Table) -> list[str]:
    """Each row's text: its string input roles joined by a newline (a sentence pair's two texts)."""
    roles = [r.name for r in task.roles() if not r.target and r.kind == "string" and r.name in table.columns]
    return ["\n".join(str(table.columns[r][i]) for r in roles if table.columns[r][i]) for i in range(len(table))]


@quiet_libraries()
def embed(texts: list[str], model_name: str, batch_size: int = 64) -> np.ndarray:
    """Normalised sentence embeddings of `texts` by `model_name` through sentence-transformers."""
    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(model_name, device=device, trust_remote_code=False)
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False).astype(np.float64)
