"""One thread, fixed seed (shared with tests/losses and tests/tasks)."""

from torch_fixtures import _frugal_torch  # noqa: F401  (autouse fixture)
