"""A private, loopback-only Ray for tests, CI and single-machine sweeps (Ray 2.60).

Ray's defaults send traffic off the machine: the node IP is the outward address (found by
"connecting" a UDP socket towards 8.8.8.8), every gRPC server listens on all interfaces,
and each ``ray.init`` probes cloud metadata services (HTTP to 169.254.169.254 and a DNS
lookup of metadata.google.internal). The settings here keep everything on 127.0.0.1.

Call order matters because some settings are read when ``ray`` is imported::

    from dino_ablate.launch.ray_local import setup_env, start_ray
    setup_env()                                   # before anything imports ray
    context = start_ray(num_cpus=2, temp_dir="/tmp/ray-ci")
    ...
    import ray
    ray.shutdown()

This module never imports ray at module level, so importing it is always safe.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray._private.worker import BaseContext, RayContext

__all__ = ["RAY_ENV", "connect_ray", "setup_env", "start_ray"]

LOOPBACK_IP = "127.0.0.1"

# Unix socket paths (Ray puts them under the temp dir) must stay below 108 bytes; Ray's own
# suffix "/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store" takes up to 64 of them.
MAX_TEMP_DIR_LEN = 40

RAY_ENV: dict[str, str] = {
    # Read when ray is imported. With "0", get_node_ip_address() returns 127.0.0.1, all
    # gcs/raylet/worker servers bind 127.0.0.1 and the 8.8.8.8 route probe is skipped.
    # Without it ray.init(_node_ip_address="127.0.0.1") is silently rewritten to the
    # outward IP by services.resolve_ip_for_localhost().
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Token auth is on by default since 2.5x: the first ray.init writes ~/.ray/auth_token
    # and logs a warning. Nothing is reachable from outside the machine, so it buys nothing.
    "RAY_AUTH_MODE": "disabled",
    # ray.init already disables usage reporting for release wheels; be explicit anyway.
    "RAY_USAGE_STATS_ENABLED": "0",
    # With the new output engine, RunConfig(verbose=0) still prints the experiment box;
    # the legacy engine prints nothing at verbose=0.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Silences the Train V1 -> V2 migration deprecation messages.
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    # Silences "Experiment state snapshotting has been triggered multiple times", which
    # appears whenever CheckpointConfig(num_to_keep=...) is set.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def setup_env(overrides: Mapping[str, str] | None = None) -> None:
    """Set the environment variables Ray needs for a loopback-only cluster.

    Must run before the first ``import ray`` in the process: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
    is read at import time. Values already present in the environment win (a developer can
    still turn something back on); ``overrides`` win over both. Idempotent.

    Args:
        overrides: extra or replacement variables, e.g. ``{"RAY_DEDUP_LOGS": "0"}``.
    """
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    for name, value in (overrides or {}).items():
        os.environ[name] = value
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        warnings.warn(
            "setup_env() called after ray was imported without it: the node would bind the "
            "outward IP, and start_ray() will refuse to start",
            stacklevel=2,
        )


def _check_loopback_mode() -> None:
    """Fail early if ray was imported before ``setup_env()`` (the node would bind outward)."""
    from ray._private import ray_constants

    if getattr(ray_constants, "ENABLE_RAY_CLUSTER", False):
        raise RuntimeError(
            "ray was imported before dino_ablate.launch.ray_local.setup_env() (or with "
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER set to something other than 0): the node would "
            "bind the outward IP. Call setup_env() before anything imports ray."
        )


def start_ray(
    num_cpus: int,
    temp_dir: str | Path,
    *,
    object_store_mb: int = 256,
    quiet: bool = True,
    block_cloud_probe: bool = True,
    runtime_env: Mapping[str, Any] | None = None,
    **init_kwargs: Any,
) -> RayContext:
    """Start a private single-node Ray cluster bound to 127.0.0.1 and connect to it.

    Args:
        num_cpus: logical CPUs Ray may schedule; trials and tasks ask for shares of these.
        temp_dir: Ray's session/log/socket directory. Keep it short (unix socket paths are
            limited to 108 bytes) and outside the venv (Ray refuses that). Each ``ray.init``
            adds a ``session_*`` directory (~0.7 MB) that nothing deletes: the caller owns it.
        object_store_mb: plasma store size. The default (30% of RAM) is pointless here, and
            on a small ``/dev/shm`` Ray falls back to disk with a warning; we pass metrics and
            checkpoint paths, not tensors.
        quiet: log at WARNING and do not forward worker stdout/stderr to the driver (trial
            errors still reach the driver).
        block_cloud_probe: dashboard.py's UsageStatsHead always calls
            ``get_cluster_config_to_report()``, which, unless ``~/ray_bootstrap_config.yaml``
            exists, sends HTTP requests to 169.254.169.254 and resolves
            metadata.google.internal. While the daemons are spawned, HOME points at a directory
            under ``temp_dir`` holding an empty such file; the driver gets its HOME back
            afterwards and the workers through ``runtime_env``.
        runtime_env: passed to ``ray.init``; merged with the HOME restoration above.
        **init_kwargs: any other ``ray.init`` argument.

    Returns:
        The context ``ray.init`` returns (``address_info`` has the node IP and GCS address).

    Raises:
        RuntimeError: ray was imported before ``setup_env()``, or the node came up on a
            non-loopback IP.
        ValueError: ``temp_dir`` is too long for Ray's unix sockets.
    """
    setup_env()
    temp_path = _checked_temp_dir(temp_dir)
    import ray
    from ray._private.worker import RayContext

    _check_loopback_mode()
    temp_path.mkdir(parents=True, exist_ok=True)
    merged_runtime_env: dict[str, Any] = dict(runtime_env or {})
    real_home = os.environ.get("HOME") or os.path.expanduser("~")
    if block_cloud_probe:
        _use_fake_home(temp_path, merged_runtime_env, real_home)
    try:
        context = ray.init(
            address="local",  # never attach to a cluster named by RAY_ADDRESS or `ray start`
            num_cpus=num_cpus,
            num_gpus=0,
            include_dashboard=False,  # needs ray[default]; we do not want its HTTP server anyway
            object_store_memory=object_store_mb * 2**20,
            _temp_dir=str(temp_path),
            _node_ip_address=LOOPBACK_IP,
            logging_level=logging.WARNING if quiet else logging.INFO,
            log_to_driver=not quiet,
            runtime_env=merged_runtime_env or None,
            **init_kwargs,
        )
    finally:
        os.environ["HOME"] = real_home
    if not isinstance(context, RayContext):  # address="local" always gives a RayContext
        raise TypeError(f"unexpected ray.init result {type(context).__name__}")
    node_ip = context.address_info.get("node_ip_address")
    if node_ip != LOOPBACK_IP:
        ray.shutdown()
        raise RuntimeError(f"Ray node came up on {node_ip!r}, expected {LOOPBACK_IP}")
    return context


def _checked_temp_dir(temp_dir: str | Path) -> Path:
    """`temp_dir` resolved; ValueError when it is too long for Ray's unix sockets."""
    temp_path = Path(temp_dir).resolve()
    if len(str(temp_path)) > MAX_TEMP_DIR_LEN:
        raise ValueError(
            f"temp_dir {str(temp_path)!r} is {len(str(temp_path))} characters; Ray's unix "
            f"socket paths need it to be at most {MAX_TEMP_DIR_LEN}"
        )
    return temp_path


def _use_fake_home(temp_path: Path, runtime_env: dict[str, Any], real_home: str) -> None:
    """Point HOME at `temp_path/home`, which holds an empty ray_bootstrap_config.yaml (see
    `start_ray`'s block_cloud_probe); the workers get `real_home` back via `runtime_env`."""
    fake_home = temp_path / "home"
    fake_home.mkdir(exist_ok=True)
    (fake_home / "ray_bootstrap_config.yaml").write_text("{}\n")
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars.setdefault("HOME", real_home)
    runtime_env["env_vars"] = env_vars
    os.environ["HOME"] = str(fake_home)


def connect_ray(
    address: str,
    *,
    quiet: bool = True,
    runtime_env: Mapping[str, Any] | None = None,
    **init_kwargs: Any,
) -> BaseContext:
    """Connect this process as a driver to an already running Ray cluster.

    For a cluster started elsewhere (``ray start --head --node-ip-address=127.0.0.1``, another
    process's ``start_ray``). The loopback and cloud-probe settings are the responsibility of
    whoever started that cluster; ``setup_env()`` is still applied here so this driver does not
    resolve an outward node IP for itself.

    Args:
        address: the GCS address, ``"127.0.0.1:6379"`` or ``"auto"``. ``"local"`` is refused:
            use ``start_ray`` to start a new cluster.
        quiet: log at WARNING and do not forward worker output to the driver.
        runtime_env: passed to ``ray.init``.
        **init_kwargs: any other ``ray.init`` argument.
    """
    if address == "local":
        raise ValueError('connect_ray("local") would start a new cluster; use start_ray()')
    setup_env()
    import ray

    _check_loopback_mode()
    return ray.init(
        address=address,
        logging_level=logging.WARNING if quiet else logging.INFO,
        log_to_driver=not quiet,
        runtime_env=dict(runtime_env) if runtime_env else None,
        **init_kwargs,
    )
