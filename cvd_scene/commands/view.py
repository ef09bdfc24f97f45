"""``cvd-scene view``: serve a run's export folder (viewer.html and every export file) to a browser or headset."""

from __future__ import annotations

import logging

from cvd_scene.commands.common import CliError, RunDir, app
from cvd_scene.runfolder import RunLayout

log = logging.getLogger("cvd_scene.commands.view")


@app.command(name="view")
def view_command(
    run_dir: RunDir,
    port: int = 8000,
    host: str = "127.0.0.1",
    https: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Serve RUN_DIR/export over HTTP on localhost: open the printed address (viewer.html) in a browser.

    A headset on the LAN needs HTTPS for WebXR: `--host 0.0.0.0 --https` serves with a self-signed certificate
    (written to RUN_DIR/export/.cert; the headset's browser asks once to accept it).

    Args:
        run_dir: The run folder (its export stage must have run).
        port: Port to listen on (0: any free port).
        host: Address to listen on: 127.0.0.1 (this machine only) or 0.0.0.0 (the LAN).
        https: Serve HTTPS with a self-signed certificate.
        quiet: Only warnings and errors.
        verbose: Debug logging.
    """
    from cvd_scene.export.serve import make_server, server_url
    from cvd_scene.logs import setup_logging

    setup_logging(quiet, verbose)
    folder = RunLayout(run_dir).export
    if not folder.is_dir():
        raise CliError(f"{folder} does not exist: run `cvd-scene export {run_dir}` first")
    try:
        server = make_server(folder, host, port, cert_dir=folder / ".cert" if https else None)
    except OSError as e:
        raise CliError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    viewer = RunLayout(run_dir).export_file("viewer")
    page = viewer.name if viewer.is_file() else ""
    log.warning("serving %s at %s (Ctrl-C stops)", folder, server_url(server, https, page))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
