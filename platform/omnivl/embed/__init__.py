"""Batch inference: embed a manifest of any size to Parquet shards (`kind: embed`), and build a FAISS index
from them (`kind: index`). Plain Python; the Ray seam is `omnivl.cluster.embed`."""
