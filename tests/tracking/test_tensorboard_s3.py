"""TensorBoard for an s3:// run directory: event files are written in a local staging directory, uploaded on
close, and the staging directory is removed (a long-lived driver must not fill its temp dir)."""

from pathlib import Path

from omnivl import storage
from omnivl.tracking.tracker import TensorBoardBackend


def test_events_reach_s3_and_the_local_staging_copy_is_removed(s3_bucket):
    uri = storage.join(s3_bucket, "run", "tensorboard")
    board = TensorBoardBackend(uri)
    board.log_metrics({"loss": 1.5}, step=3)
    staging = Path(board.local)
    board.close()

    uploaded = storage.list_dir(uri)
    assert any("tfevents" in name for name in uploaded), uploaded
    assert not staging.exists()


def test_a_handle_that_never_writes_makes_no_staging_directory(s3_bucket):
    board = TensorBoardBackend(storage.join(s3_bucket, "run", "tensorboard"))
    board.close()
    assert board.local is None
