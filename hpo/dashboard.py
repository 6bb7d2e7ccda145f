"""optuna-dashboard on the study storage, bound to 127.0.0.1 unless asked otherwise.

The dashboard is optuna-dashboard's own WSGI app (``optuna_dashboard.wsgi``) on the same RDB
storage the workers write to, served by a threaded ``wsgiref`` server so that the browser's
parallel requests do not queue behind each other. It has no authentication: anyone who can
reach the port can read every study and write notes into it, hence the loopback default
and the warning for any other address.
"""

from __future__ import annotations

import ipaddress
import sys
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hpo.errors import UserError


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request (the page polls the API every few seconds)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - wsgiref's signature
        pass


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_warning(host: str, port: int = 8080) -> str | None:
    """The warning printed when the dashboard listens beyond this machine, else None; the
    SSH tunnel it suggests uses ``port``."""
    if is_loopback(host):
        return None
    return (
        f"warning: the dashboard listens on {host}, reachable from other machines, and has no "
        "authentication: anyone who can reach the port can read every study and edit notes. "
        f"Prefer the default 127.0.0.1 with an SSH tunnel (ssh -L {port}:127.0.0.1:{port} HOST)."
    )


def make_app(storage_url: str, artifacts: str | None = None) -> Any:
    """optuna-dashboard's WSGI app on an existing storage and its artifact store.

    Args:
        storage_url: The study storage.
        artifacts: The artifact store's folder (default: :func:`hpo.artifacts.dashboard_store`).

    Raises:
        UserError: missing SQLite file or unreachable database.
    """
    from optuna_dashboard import wsgi

    from hpo.artifacts import dashboard_store
    from hpo.storage import open_existing_storage

    storage = open_existing_storage(storage_url)
    store, _ = dashboard_store(storage, storage_url, artifacts)
    return wsgi(storage, artifact_store=store)


def make_dashboard_server(
    storage_url: str, host: str = "127.0.0.1", port: int = 8080, artifacts: str | None = None
) -> Any:
    """A threaded WSGI server for the dashboard, bound but not yet serving (port 0: any free port).

    Raises:
        UserError: the storage cannot be opened, or the address cannot be bound.
    """
    app = make_app(storage_url, artifacts)
    try:
        return make_server(host, port, app, server_class=_ThreadedServer, handler_class=_QuietHandler)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080, artifacts: str | None = None) -> None:
    """Serve the dashboard until Ctrl-C.

    Args:
        storage_url: The study storage (the same URL the workers use).
        host: Address to bind; anything but loopback prints a no-authentication warning.
        port: TCP port.
        artifacts: The artifact store's folder (default: beside the SQLite file, else the one
            the studies recorded from ``execution.artifacts``).

    Raises:
        UserError: the storage cannot be opened, or the address cannot be bound.
    """
    from hpo.storage import redact

    warning = bind_warning(host, port)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    server = make_dashboard_server(storage_url, host, port, artifacts)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"optuna-dashboard on http://{shown}:{server.server_port}/dashboard/ "
        f"(storage {redact(storage_url)}); Ctrl-C to stop",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)
    finally:
        server.server_close()
