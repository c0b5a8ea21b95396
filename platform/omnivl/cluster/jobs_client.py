"""The Ray Jobs API seam: submit a validated job spec to a remote Ray cluster, query, tail and stop jobs.

This is the only module that talks to `ray.job_submission`. Everything a user can get wrong (address, auth,
unknown job id) comes back as a `JobsError` whose message names the thing at fault and what to set.

Two Ray behaviours are handled on purpose rather than inherited:
- Address: Ray's `JobSubmissionClient` silently replaces the `address` argument with `RAY_API_SERVER_ADDRESS`
  or `RAY_ADDRESS` from the environment. Here an explicit address always wins; the environment is only the
  default (`resolve_address`).
- Token auth (Ray >= 2.52, on by default for local clusters since 2.59): Ray's client sends a token only when
  this process runs with `RAY_AUTH_MODE=token`. Here the caller picks `auth` = auto | token | disabled and
  the token is sent as an explicit `Authorization` header (`auth_headers`); a 401/403 becomes a message that
  says which token was used and what to set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import yaml

ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
AUTH_MODES = ("auto", "token", "disabled")
SPEC_FILENAME = "spec.yaml"
ENTRYPOINT = f"python -m omnivl run {SPEC_FILENAME}"
# Never shipped with the code: build caches. Data, checkpoints, `.venv` and `runs/` are outside the package
# directory, so they are not uploaded in the first place.
CODE_EXCLUDES = ["__pycache__", "*.pyc", "*.egg-info"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class JobsError(RuntimeError):
    """The Jobs API could not do what was asked; the message says what to fix."""


class JobsAuthError(JobsError):
    """The cluster rejected (or would reject) our credentials, or the requested auth mode has no token."""


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for messages (never the token itself)


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str
    driver_exit_code: int | None
    entrypoint: str

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


# --- address and auth -----------------------------------------------------------------------------------


def resolve_address(address: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The Jobs API URL to use: `address` if given, else `RAY_API_SERVER_ADDRESS`, else `RAY_ADDRESS`.

    A bare `host:port` gets `http://`. Raises JobsError if nothing is set or the address is a Ray Client
    (`ray://`) address, which the Jobs API does not speak.
    """
    chosen, origin = address, "--address"
    for var in ADDRESS_ENV_VARS:
        if chosen:
            break
        chosen, origin = environ.get(var), var
    if not chosen:
        raise JobsError("no cluster address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS")
    chosen = chosen.strip().rstrip("/")
    if chosen.startswith("ray://") or chosen == "auto":
        raise JobsError(f"{origin}={chosen!r} is not a Jobs API address; use the dashboard URL http://HEAD:8265")
    return chosen if "://" in chosen else f"http://{chosen}"


def default_auth_mode(environ: Mapping[str, str] = os.environ) -> str:
    """`token` or `disabled` when `RAY_AUTH_MODE` says so, else `auto`."""
    mode = environ.get("RAY_AUTH_MODE", "").strip().lower()
    return mode if mode in ("token", "disabled") else "auto"


def find_token(environ: Mapping[str, str] = os.environ, home: Path | None = None) -> Token | None:
    """Ray's token lookup order: `RAY_AUTH_TOKEN`, then the file at `RAY_AUTH_TOKEN_PATH`, then
    `~/.ray/auth_token`. Returns None if none is set. Raises JobsAuthError if `RAY_AUTH_TOKEN_PATH` names a
    file that cannot be read (an explicit setting that is wrong should not be skipped silently)."""
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            return Token(path.read_text().strip(), f"RAY_AUTH_TOKEN_PATH={path}")
        except OSError as exc:
            raise JobsAuthError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read: {exc.strerror}") from None
    default = (home or Path(environ.get("HOME") or Path.home())) / ".ray" / "auth_token"
    if default.is_file():
        return Token(default.read_text().strip(), str(default))
    return None


def select_token(auth: str, environ: Mapping[str, str] = os.environ, home: Path | None = None) -> Token | None:
    """The token to send for `auth` mode: none for `disabled`, the one found (if any) for `auto`; `token`
    raises JobsAuthError when none is found."""
    if auth not in AUTH_MODES:
        raise JobsAuthError(f"auth mode must be one of {list(AUTH_MODES)}, got {auth!r}")
    if auth == "disabled":
        return None
    token = find_token(environ, home)
    if token is None and auth == "token":
        raise JobsAuthError(
            "--auth token (or RAY_AUTH_MODE=token) but no token found: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH "
            "to a file holding it, or put it in ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
        )
    return token


def auth_headers(token: Token | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.value}"} if token else {}


def _auth_failure(address: str, auth: str, token: Token | None, detail: str) -> JobsAuthError:
    if token is None:
        return JobsAuthError(
            f"the Ray cluster at {address} requires token authentication and no token was sent (auth mode "
            f"{auth!r}). Set RAY_AUTH_TOKEN to the cluster's token (or RAY_AUTH_TOKEN_PATH to a file holding "
            "it; `ray get-auth-token` on the head prints it) and use --auth auto or --auth token "
            "(RAY_AUTH_MODE=token does the same)."
        )
    return JobsAuthError(
        f"the Ray cluster at {address} rejected the token from {token.source} ({detail.strip().splitlines()[0]}). "
        "Set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to this cluster's token (`ray get-auth-token` on the head)."
    )


# --- connection ------------------------------------------------------------------------------------------


class JobsClient:
    """A `JobSubmissionClient` bound to one address and auth decision, with Ray's errors translated."""

    def __init__(self, address: str | None = None, auth: str | None = None,
                 environ: Mapping[str, str] = os.environ) -> None:
        """Connect (Ray checks the server version on construction). Raises JobsError / JobsAuthError."""
        self.address = resolve_address(address, environ)
        self.auth = auth or default_auth_mode(environ)
        self.token = select_token(self.auth, environ)
        with self._translated(), _without_env(ADDRESS_ENV_VARS):
            from ray.job_submission import JobSubmissionClient

            self._ray = JobSubmissionClient(self.address, headers=auth_headers(self.token))

    @contextlib.contextmanager
    def _translated(self, job_id: str | None = None) -> Iterator[None]:
        """Turn Ray's auth, connection and not-found errors into JobsError naming the address or job."""
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as exc:
            raise _auth_failure(self.address, self.auth, self.token, str(exc)) from None
        except ConnectionError as exc:
            raise JobsError(
                f"cannot reach the Ray Jobs API at {self.address} ({exc}); is the head's dashboard running and "
                "is this its port (8265 by default, not the GCS port 6379)?"
            ) from None
        except RuntimeError as exc:
            if job_id and ("404" in str(exc) or "does not exist" in str(exc)):
                raise JobsError(f"no job {job_id!r} on the cluster at {self.address}") from None
            raise
        except Exception as exc:  # aiohttp's websocket handshake errors carry the HTTP status
            status = getattr(exc, "status", None)
            if status in (401, 403):
                raise _auth_failure(self.address, self.auth, self.token, f"HTTP {status}") from None
            raise

    # --- submission --------------------------------------------------------------------------------------

    def submit_spec(self, spec_path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                    submission_id: str | None = None, env_vars: Mapping[str, str] | None = None) -> str:
        """Validate the spec (raises SpecError before contacting the cluster), then submit
        `python -m omnivl run spec.yaml` with the resolved spec and the `omnivl` code. Returns the job id.
        `env_vars` (e.g. a tracker's URI and token, see `env_from_shell`) go into the job's runtime_env, which
        sets them for the job's driver and every worker; they never enter the spec."""
        from omnivl.spec import load_spec

        job = load_spec(spec_path, overrides)
        resolved = resolved_spec(spec_path, overrides)
        with tempfile.TemporaryDirectory(prefix="omnivl-submit-") as workdir:
            (Path(workdir) / SPEC_FILENAME).write_text(yaml.safe_dump(resolved, sort_keys=False))
            return self.submit_entrypoint(
                ENTRYPOINT, runtime_env=code_runtime_env(workdir, env_vars), submission_id=submission_id,
                metadata={"omnivl_kind": job.kind, "omnivl_name": job.name, "omnivl_spec": Path(spec_path).name},
            )

    def submit_entrypoint(self, entrypoint: str, runtime_env: dict | None = None,
                          submission_id: str | None = None, metadata: dict | None = None) -> str:
        """Submit a raw entrypoint (the runtime_env is uploaded during this call). Returns the job id."""
        with self._translated():
            return self._ray.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                        submission_id=submission_id, metadata=metadata)

    # --- queries -----------------------------------------------------------------------------------------

    def info(self, job_id: str) -> JobInfo:
        with self._translated(job_id):
            d = self._ray.get_job_info(job_id)
        return JobInfo(job_id, str(d.status.value if hasattr(d.status, "value") else d.status),
                       d.message or "", d.driver_exit_code, d.entrypoint)

    def logs(self, job_id: str) -> str:
        with self._translated(job_id):
            return self._ray.get_job_logs(job_id)

    def follow_logs(self, job_id: str, write: Callable[[str], object]) -> JobInfo:
        """Stream the job's log lines to `write` until the job ends; returns its final info."""
        self.info(job_id)  # a clear error for an unknown id before opening the websocket

        async def _tail() -> None:
            async for chunk in self._ray.tail_job_logs(job_id):
                write(chunk)

        with self._translated(job_id):
            asyncio.run(_tail())
        return self.wait(job_id)

    def wait(self, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0,
             on_change: Callable[[JobInfo], object] | None = None) -> JobInfo:
        """Poll until the job is terminal; `on_change` sees each new status. Raises TimeoutError (naming the
        job and its last status) after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = None
        while True:
            info = self.info(job_id)
            if on_change and info.status != last:
                on_change(info)
            last = info.status
            if info.terminal:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {info.status} after {timeout_s:.0f}s")
            time.sleep(poll_s)

    def stop(self, job_id: str) -> bool:
        """Ask the cluster to stop the job; False if it had already finished."""
        with self._translated(job_id):
            return bool(self._ray.stop_job(job_id))


# --- what is shipped -------------------------------------------------------------------------------------


def resolved_spec(spec_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The spec's YAML mapping with `overrides` applied, exactly what `load_spec` validated: the cluster
    runs this file, so it needs no `--set` of its own."""
    from omnivl.spec.loader import read_yaml
    from omnivl.spec.overrides import apply_override

    raw = read_yaml(spec_path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw


def relative_outputs(job) -> list[str]:
    """`field=value` for each output location of `job` that is a relative local path. On the cluster such a
    path resolves inside the job's temporary working directory, so the caller should warn."""
    found = []
    for field in ("output", "output_root"):
        value = getattr(job, field, None)
        if isinstance(value, str) and "://" not in value and not value.startswith(("/", "~")):
            found.append(f"{field}={value}")
    return found


def code_runtime_env(working_dir: str | Path, env_vars: Mapping[str, str] | None = None) -> dict:
    """runtime_env carrying our code: the `omnivl` package as a py_module and `working_dir` (which holds the
    resolved spec), plus `env_vars` when given. Data, checkpoints and outputs are addressed by path or URI in
    the spec, never uploaded; third-party dependencies come from the cluster's image."""
    import omnivl

    env = {
        "working_dir": str(working_dir),
        "py_modules": [str(Path(omnivl.__file__).resolve().parent)],
        "excludes": list(CODE_EXCLUDES),
    }
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def env_from_shell(names: list[str] | tuple[str, ...], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`{name: value}` of each of `names` in this shell's environment (`omnivl submit --env-var NAME`).
    Raises ValueError naming the ones that are not valid variable names or not set."""
    bad = [n for n in names if not _ENV_NAME.match(n)]
    if bad:
        raise ValueError(f"--env-var {', '.join(bad)}: not an environment variable name (give the NAME only; "
                         "the value is read from this shell)")
    missing = [n for n in names if n not in environ]
    if missing:
        raise ValueError(f"--env-var {', '.join(missing)}: not set in this shell; export it first")
    return {n: environ[n] for n in names}


@contextlib.contextmanager
def _without_env(names: tuple[str, ...]) -> Iterator[None]:
    """Hide `names` from os.environ for the duration (Ray's client reads them to override our address)."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


__all__ = [
    "AUTH_MODES", "ENTRYPOINT", "JobInfo", "JobsAuthError", "JobsClient", "JobsError", "Token", "auth_headers",
    "code_runtime_env", "default_auth_mode", "env_from_shell", "find_token", "relative_outputs", "resolve_address", "resolved_spec", "select_token",
]
