"""Pipelines: named steps whose outputs are addressed by a hash of their config and their inputs."""
