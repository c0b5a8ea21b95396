"""Evaluation metrics and reports (retrieval, zero-shot, linear probe, captioning, QA)."""
