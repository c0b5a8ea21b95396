"""`Tracker`: one handle on a run's experiment trackers (TensorBoard, MLflow, W&B), fanning out metrics, params,
tags and files. It is also a `RunLog` sink (`log(record)`) for rank 0's step records.

Opening a tracker for a run directory continues the tracker runs named in its `tracking.json` and creates (and
records) the ones missing, so the driver, the rank-0 worker of every stage, a re-run after an interruption and
a later `evaluate` job all log into the same runs. Logging never stops training: after the tracker runs are
opened, a failing tracker prints one warning and is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from omnivl import storage
from omnivl.tracking.config import MlflowConfig, TrackingConfig, WandbConfig
from omnivl.tracking.names import flatten_params, global_step, step_metrics
from omnivl.tracking.record import load_record, save_record, without_credentials

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"


class Tracker:
    """Fan-out to the backends of one run. Build with `Tracker.open`; close it (or use it as a context manager)."""

    def __init__(self, backends: list, record: dict, run_dir: str, step_offset: int = 0) -> None:
        self.backends = list(backends)
        self.record = record
        self.run_dir = run_dir
        self.step_offset = int(step_offset)
        self._warned: set[str] = set()

    @classmethod
    def open(cls, cfg: TrackingConfig, run_dir: str, *, name: str, kind: str, params: dict | None = None,
             step_offset: int = 0, environ=os.environ) -> "Tracker":
        """Continue (or create) the tracker runs of `run_dir` that `cfg` turns on; `params` (the resolved spec)
        are logged when given. Raises when an enabled tracker cannot be reached or is not configured (MLflow
        without a URI), before anything is trained."""
        record = load_record(run_dir)
        before = json.dumps(record, sort_keys=True)
        backends: list = []
        try:
            if cfg.tensorboard:
                backends.append(TensorBoardBackend(storage.join(run_dir, TENSORBOARD_DIR)))
            if cfg.mlflow is not None:
                backends.append(MlflowBackend.open(cfg.mlflow, record, name=name, kind=kind, run_dir=run_dir,
                                                   environ=environ))
            if cfg.wandb is not None:
                backends.append(WandbBackend.open(cfg.wandb, record, name=name, kind=kind, run_dir=run_dir,
                                                  environ=environ))
        finally:  # a run created before another tracker failed is recorded all the same
            if json.dumps(record, sort_keys=True) != before:
                save_record(run_dir, record)
        tracker = cls(backends, record, run_dir, step_offset)
        if params is not None:
            tracker.log_params(params)
        return tracker

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- what is logged -----------------------------------------------------------------------------------

    def log(self, record: dict) -> None:
        """RunLog sink: a step record (`omnivl.train.runner.make_record`) at its global step."""
        step = global_step(self.step_offset, record["step"])
        self.log_metrics(step_metrics(record), step, timestamp=record.get("time"))

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None:
        self._each("log_metrics", metrics, step, timestamp)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        """Final numbers (evaluation): metrics at `step`, and W&B's run summary."""
        self._each("log_summary", metrics, step)

    def log_params(self, tree: dict) -> None:
        """The resolved spec: MLflow params (dotted keys), W&B config, TensorBoard text."""
        self._each("log_params", tree)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._each("set_tags", {k: str(v) for k, v in tags.items()})

    def log_file(self, path: str | Path, folder: str) -> None:
        """A local file as an artifact under `folder` (MLflow artifacts, W&B run files)."""
        self._each("log_file", str(path), folder)

    def set_status(self, status: str) -> None:
        """MLflow run status: RUNNING while a job works on the run, then FINISHED or FAILED."""
        self._each("set_status", status)

    def flush(self) -> None:
        self._each("flush")

    def close(self, failed: bool = False) -> None:
        self._each("close", failed)

    def where(self) -> list[str]:
        """One line per backend saying where its data goes."""
        return [b.where() for b in self.backends]

    def _each(self, method: str, *args) -> None:
        for backend in self.backends:
            fn = getattr(backend, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as exc:  # a tracker outage must not stop training
                key = f"{backend.name}.{method}"
                if key not in self._warned:
                    self._warned.add(key)
                    print(f"warning: {backend.name} {method} failed ({type(exc).__name__}: {exc}); "
                          "continuing without it", flush=True)


# ------------------------------------------------------------------------------------------------- TensorBoard


class TensorBoardBackend:
    """Event files under `<run_dir>/tensorboard/` (for an s3:// run directory: written locally, uploaded on
    flush and close). The writer opens on first use, so a handle that only logs files creates no event file."""

    name = "tensorboard"

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.staged = storage.is_s3(uri)
        self.local: str | None = None if self.staged else uri  # an s3:// run's staging dir: made on first write
        self._writer = None

    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if self.local is None:
                self.local = tempfile.mkdtemp(prefix="omnivl-tb-")
            self._writer = SummaryWriter(log_dir=self.local, flush_secs=5)
        return self._writer

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None:
        w = self.writer()
        for key, value in metrics.items():
            w.add_scalar(key, value, global_step=step, walltime=timestamp)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self.log_metrics(metrics, step)
        self.flush()

    def log_params(self, tree: dict) -> None:
        lines = [f"    {k}: {v}" for k, v in flatten_params(tree).items()]  # indented: markdown code block
        self.writer().add_text("spec", "\n".join(lines))

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.writer().add_text(key, value)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._upload()

    def close(self, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.close()
            self._upload()
            self._writer = None
        if self.staged and self.local is not None:  # its event files are uploaded: drop the local copy
            shutil.rmtree(self.local, ignore_errors=True)
            self.local = None

    def where(self) -> str:
        return f"tensorboard: {self.uri} (tensorboard --logdir {self.uri})"

    def _upload(self) -> None:
        if not self.staged:
            return
        for name in os.listdir(self.local):
            storage.write_bytes(storage.join(self.uri, name), Path(self.local, name).read_bytes())


# ------------------------------------------------------------------------------------------------------ MLflow


class MlflowBackend:
    """An MLflow run through `MlflowClient` (no global active run). Metrics are batched and sent by a
    background thread every second, so a slow server never stalls a training step."""

    name = "mlflow"
    SEND_EVERY_S = 1.0
    MAX_PENDING = 200_000

    def __init__(self, client, run_id: str, uri: str) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri
        self._pending: list = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    @classmethod
    def open(cls, cfg: MlflowConfig, record: dict, *, name: str, kind: str, run_dir: str,
             environ=os.environ) -> "MlflowBackend":
        """Continue the run `record` names on the same server, else create one (and record it)."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        saved = record.get("mlflow") or {}
        uri = cfg.resolved_uri(environ) or saved.get("tracking_uri")
        if not uri:
            raise ValueError("tracking.mlflow: no tracking_uri in the spec and MLFLOW_TRACKING_URI is not set "
                             "(omnivl submit --env-var MLFLOW_TRACKING_URI passes it to a cluster job)")
        client = MlflowClient(tracking_uri=uri)
        run_id = saved.get("run_id") if saved.get("tracking_uri") == without_credentials(uri) else None
        if run_id:
            try:
                client.get_run(run_id)
            except MlflowException as exc:
                print(f"warning: MLflow run {run_id} of {run_dir} not found at {without_credentials(uri)} "
                      f"({exc.error_code}); starting a new run", flush=True)
                run_id = None
        elif saved.get("run_id"):
            print(f"note: {run_dir} was tracked in MLflow run {saved['run_id']} at {saved.get('tracking_uri')}; "
                  f"this job logs to {without_credentials(uri)}: a new run", flush=True)
        if run_id is None:
            experiment_id = _experiment_id(client, cfg.experiment or name)
            run = client.create_run(experiment_id, run_name=cfg.run_name or name,
                                    tags={"omnivl.kind": kind, "omnivl.run_dir": run_dir})
            run_id = run.info.run_id
            record["mlflow"] = {"tracking_uri": without_credentials(uri), "experiment_id": experiment_id,
                                "run_id": run_id}
        return cls(client, run_id, without_credentials(uri))

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None:
        from mlflow.entities import Metric

        ms = int((timestamp if timestamp is not None else time.time()) * 1000)
        with self._lock:
            self._pending.extend(Metric(k, float(v), ms, int(step)) for k, v in metrics.items())
            del self._pending[:-self.MAX_PENDING]
        if self._thread is None:
            self._thread = threading.Thread(target=self._sender, name="omnivl-mlflow", daemon=True)
            self._thread.start()

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self.log_metrics(metrics, step)
        self.flush()

    def log_params(self, tree: dict) -> None:
        """Params already on the run keep their value (MLflow never changes one); a changed value is listed in
        the tag `omnivl.params_changed` and warned about."""
        from mlflow.entities import Param

        params = flatten_params(tree)
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):  # MLflow's per-request limit on params
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            print(f"warning: MLflow run {self.run_id} keeps the first value of params changed since: "
                  f"{', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}", flush=True)
            self.set_tags({"omnivl.params_changed": ",".join(changed)[:5000]})

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_file(self, path: str, folder: str) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path=folder)

    def set_status(self, status: str) -> None:
        self.flush()
        if status == "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.client.set_terminated(self.run_id, status=status)

    def flush(self) -> None:
        self._send()

    def close(self, failed: bool = False) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._send()

    def where(self) -> str:
        return f"mlflow: run {self.run_id} at {self.uri}"

    def _sender(self) -> None:
        while not self._stop.wait(self.SEND_EVERY_S):
            self._send()

    def _send(self) -> None:
        with self._send_lock:
            while True:
                with self._lock:
                    batch, self._pending = self._pending[:1000], self._pending[1000:]
                if not batch:
                    return
                try:
                    self.client.log_batch(self.run_id, metrics=batch)
                except Exception as exc:
                    with self._lock:
                        self._pending[:0] = batch  # keep them for the next try
                    if not self._warned:
                        self._warned = True
                        print(f"warning: MLflow at {self.uri} did not take metrics ({type(exc).__name__}: "
                              f"{exc}); retrying in the background", flush=True)
                    return


def new_wandb_id() -> str:
    """A fresh W&B run id (8 characters of [a-z0-9], like W&B's own)."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _experiment_id(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by another job
        return client.get_experiment_by_name(name).experiment_id


# ------------------------------------------------------------------------------------------------------- W&B


class WandbBackend:
    """A W&B run continued by id (`resume="allow"`). Each handle is one `wandb.init` ... `finish`, so only one
    process writes the run at a time: the driver closes its handle before a stage's workers open theirs.
    Offline runs land in `<run_dir>/wandb/` (or WANDB_DIR) for `wandb sync`."""

    name = "wandb"

    def __init__(self, run, mode: str, upload_to: str | None = None, local_dir: str | None = None) -> None:
        self.run, self.mode = run, mode
        self.upload_to, self.local_dir = upload_to, local_dir

    @classmethod
    def open(cls, cfg: WandbConfig, record: dict, *, name: str, kind: str, run_dir: str,
             environ=os.environ) -> "WandbBackend":
        import wandb

        saved = record.get("wandb") or {}
        where = cfg.resolved(name, environ)
        same = saved.get("project") == where["project"] and saved.get("entity") == where["entity"]
        run_id = saved.get("id") if same else None
        run_id = run_id or new_wandb_id()
        kwargs = {"project": where["project"], "entity": where["entity"], "mode": where["mode"], "id": run_id,
                  "resume": "allow", "name": name, "job_type": kind,
                  "settings": wandb.Settings(console="off", silent=True)}
        upload_to = local_dir = None
        if not environ.get("WANDB_DIR"):
            if storage.is_s3(run_dir):
                local_dir = tempfile.mkdtemp(prefix="omnivl-wandb-")
                upload_to = storage.join(run_dir, WANDB_DIR)
                kwargs["dir"] = local_dir
            else:
                os.makedirs(run_dir, exist_ok=True)
                kwargs["dir"] = run_dir  # wandb adds its own `wandb/` below
        run = wandb.init(**kwargs)
        record["wandb"] = {"id": run_id, **where}
        return cls(run, where["mode"], upload_to, local_dir)

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None:
        # W&B drops (with a warning) a step below its current one: the steps a resumed stage logs again
        if step >= self.run.step:
            self.run.log(metrics, step=step)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self.run.summary.update(metrics)
        self.log_metrics(metrics, step)

    def log_params(self, tree: dict) -> None:
        self.run.config.update(tree, allow_val_change=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.run.summary.update(tags)

    def log_file(self, path: str, folder: str) -> None:
        # a copy inside the run's directory (W&B would symlink an outside file, which may be a temp file)
        dest = Path(self.run.dir, folder, Path(path).name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        self.run.save(str(dest), base_path=self.run.dir, policy="now")

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)
        if self.upload_to and self.local_dir:
            storage.upload_dir(Path(self.local_dir, WANDB_DIR), self.upload_to)

    def where(self) -> str:
        return f"wandb: run {self.run.id} ({self.mode}) in project {self.run.project}"
