"""What `/readyz` answers: a Serve application is ready when it runs with warm model replicas. Plain Python over
the status objects of `ray.serve.status()` (read by attribute, so tests build them without a cluster); the seam
that asks Serve is `omnivl.cluster.serve_app.ServeReadiness`."""

from __future__ import annotations

from omnivl.serving import schemas as S

MODEL_DEPLOYMENT = "OmniVLModel"
INGRESS_DEPLOYMENT = "OmniVLIngress"


def _state(value) -> str:
    return getattr(value, "value", str(value))


def app_readiness(app) -> S.ReadyResponse:
    """Ready iff the application (a `serve.status().applications[name]`, or None) is RUNNING with at least one
    RUNNING model replica; otherwise not ready, with the application's and the model deployment's status."""
    if app is None:
        return S.ReadyResponse(status="not_ready", reason="application not deployed")
    replicas = {name: {_state(k): n for k, n in d.replica_states.items()} for name, d in app.deployments.items()}
    running = replicas.get(MODEL_DEPLOYMENT, {}).get("RUNNING", 0)
    if _state(app.status) == "RUNNING" and running:
        return S.ReadyResponse(status="ready", reason=f"{running} model replica(s) loaded and warmed up",
                               replicas=replicas)
    model = app.deployments.get(MODEL_DEPLOYMENT)
    if model is None:
        detail = f"no {MODEL_DEPLOYMENT} deployment"
    else:
        detail = f"{MODEL_DEPLOYMENT} {_state(model.status)}, {running} warm replica(s)"
        detail += f": {model.message}" if model.message else ""
    return S.ReadyResponse(status="not_ready", reason=f"application {_state(app.status)}; {detail}",
                           replicas=replicas)
