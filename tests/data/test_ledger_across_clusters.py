"""A process that shuts Ray down and starts another embedded cluster (as a test module or a notebook does) gets
a ledger actor of the new cluster, not the cached handle of the old one: serializing that stale handle makes Ray
abort the whole process (`Check failed: ... Cannot find an actor handle`), which killed a full test run."""

import pytest

pytestmark = pytest.mark.ray


def test_the_ledger_handle_is_per_cluster():
    import ray

    from omnivl.cluster.data_pipeline import ledger_actor

    if ray.is_initialized():
        ray.shutdown()  # the shared one (conftest's ray_local) is started again by the next test that needs it
    handles = []
    for _ in range(2):
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            handle = ledger_actor()
            handles.append(handle)

            @ray.remote(num_cpus=0)
            def snapshot(ledger) -> dict:
                return ray.get(ledger.report.remote(None))

            assert isinstance(ray.get(snapshot.remote(handle), timeout=60), dict)  # the handle is serialized
        finally:
            ray.shutdown()
    assert handles[0]._actor_id != handles[1]._actor_id
