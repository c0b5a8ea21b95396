"""Data plane library: manifests, storage, decoding, sampling, transforms, tokenization, synthetic corpus.

Pure functions on numpy batches; the Ray Data wiring lives in `omnivl.cluster.data_pipeline`.
"""
