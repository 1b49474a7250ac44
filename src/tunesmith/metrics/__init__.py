"""Metric implementations the tasks use (on scikit-learn, seqeval, sacreBLEU, rouge-score): a library
layer below the tasks, so the shared evaluation engine (tunesmith.evaluation) names no metric."""
