"""`bench ui` and `bench server`: the MLflow UI on a store, and one tracking server for every node."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmark.cli.app import app, console, err_console
from benchmark.cli.options import TrackingUriOpt


def experiment_links(uri: str, base_url: str) -> list[str]:
    """``name: URL`` of each experiment's runs table (headline columns shown) in the MLflow UI at ``base_url``.

    Experiments made before the suite tagged them get the classic-ML kind and the headline view tags here.
    """
    from mlflow.tracking import MlflowClient

    from benchmark.tracking import EXPERIMENT_TAGS, HEADLINE_VIEW

    try:
        client = MlflowClient(tracking_uri=uri)
        experiments = [e for e in client.search_experiments() if e.name != "Default"]
        for experiment in experiments:
            for key, value in EXPERIMENT_TAGS.items():
                if key not in experiment.tags:
                    client.set_experiment_tag(experiment.experiment_id, key, value)
    except Exception:  # an empty, read-only or foreign store: the UI still opens
        return []
    return [f"{e.name}: {base_url}/#/experiments/{e.experiment_id}/runs?viewStateShareKey={HEADLINE_VIEW}"
            for e in experiments]


def serve_until_signal(command: list[str]) -> int:
    """Run ``command`` (a server) in its own process group until it exits, Ctrl-C or SIGTERM.

    On SIGINT or SIGTERM the whole group is terminated (killed after 10 s), so no worker keeps the port.
    """
    import signal
    import subprocess

    process = subprocess.Popen(command, start_new_session=True)

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return process.wait()
    except KeyboardInterrupt:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command("ui")
def ui_cmd(
    tracking_uri: TrackingUriOpt = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 5000,
) -> None:
    """Start the MLflow UI on the tracking store (stopped, with its workers, by Ctrl-C or SIGTERM)."""
    from benchmark.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    base_url = f"http://{host}:{port}"
    console.print(f"MLflow UI for {uri} at {base_url} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    for line in experiment_links(uri, base_url):
        console.print(f"  runs of {line}", highlight=False, soft_wrap=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
               "--workers", "1"]
    code = serve_until_signal(command)
    if code == 130:
        err_console.print("stopped the MLflow UI")
    raise typer.Exit(code)


@app.command("server")
def server_cmd(
    backend_store_uri: Annotated[str | None, typer.Option(
        "--backend-store-uri", help="SQL store: sqlite:///PATH, postgresql://... (default: the default store)")] = None,
    artifacts: Annotated[Path | None, typer.Option(
        "--artifacts", help="where the server keeps artifacts (default: next to a SQLite file)")] = None,
    host: Annotated[str, typer.Option("--host", help="interface (MLflow has no auth: loopback by default)")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option("--port")] = 5000,
    workers: Annotated[int | None, typer.Option("--workers", help="server processes (SQLite: 1)")] = None,
) -> None:
    """Start one MLflow tracking server (SQL store, served artifacts) for every node: --tracking-uri http://HOST:PORT."""
    import subprocess

    from benchmark.server import server_command
    from benchmark.tracking import default_tracking_uri

    command = server_command(backend_store_uri or default_tracking_uri(), artifacts=artifacts, host=host, port=port,
                             workers=workers)
    console.print(f"MLflow server for {command[5]} (artifacts in {command[8]}) at http://{host}:{port}; "
                  f"use --tracking-uri http://{host}:{port} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    raise typer.Exit(subprocess.call(command))
