"""SOG and compressed PLY, the formats SuperSplat writes by default, and ``viewer.html``, through PlayCanvas'
maintained converter ``splat-transform`` (npm ``@playcanvas/splat-transform``, installed into ``.tools/`` by
scripts/install.sh) rather than writers of our own.

``viewer.html`` is the SuperSplat viewer page splat-transform writes (the maintained ``@playcanvas/supersplat-viewer``
with the PlayCanvas engine, about 3 MB, and the scene as SOG, all inlined): it opens at the first planned camera,
plays the planned flythrough (``viewer_settings.json``) and offers "Enter VR" through WebXR where the browser has
it. Everything is inlined because browsers refuse ``fetch()`` of a neighbouring file from a ``file://`` page;
SOG keeps that small (measured: 25 bytes a splat for 20k splats at SH degree 1, about 10 MB at the 400k-splat
headset budget), and the page is not written
above ``VIEWER_MAX_SPLATS`` (``cvd-scene view RUN`` serves the folder for those, and for headsets, which need
HTTPS or localhost for WebXR).

splat-transform reads a 3DGS PLY in the readers' frame and writes SOG and compressed PLY in that same frame (its
"PLY space"), so these files share the frame of ``scene.ply``. SOG compression runs its k-means on the CPU
(``-g cpu``): measured about 10 CPU seconds for 20k splats at SH degree 1.

Found as ``$CVD_SCENE_SPLAT_TRANSFORM``, else ``.tools/node_modules/.bin/splat-transform`` of this checkout, else
``splat-transform`` on ``PATH``; it needs ``node``. Must not import torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ENV_VARIABLE = "CVD_SCENE_SPLAT_TRANSFORM"
VIEWER_MAX_SPLATS = 2_000_000
"""Most splats inlined into ``viewer.html`` (about 60 MB of SOG: past that a browser tab struggles to parse it)."""
REPO_TOOL = Path(__file__).resolve().parents[2] / ".tools" / "node_modules" / ".bin" / "splat-transform"


def splat_transform_exe() -> Path | None:
    """The splat-transform executable, or None when it (or node) is not installed."""
    if shutil.which("node") is None:
        return None
    for candidate in (os.environ.get(ENV_VARIABLE), REPO_TOOL, shutil.which("splat-transform")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def missing_reason() -> str:
    """Why splat-transform cannot run here (for the report's ``skipped``)."""
    if shutil.which("node") is None:
        return "needs node and @playcanvas/splat-transform (scripts/install.sh installs both)"
    return f"needs @playcanvas/splat-transform ({REPO_TOOL} or ${ENV_VARIABLE}; scripts/install.sh installs it)"


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, timeout_s: float = 1800.0,
    viewer_settings: str | os.PathLike | None = None,
) -> Path:  # fmt: skip
    """Convert the 3DGS PLY ``src`` into ``dst`` (``.sog``, ``.compressed.ply`` or ``.html``, by its name) with
    splat-transform; written through a temporary name and renamed. ``viewer_settings`` (a SuperSplat settings JSON)
    goes into an ``.html`` page. Raises ``RuntimeError`` naming the file and splat-transform's message when it
    fails, ``FileNotFoundError`` when it is not installed."""
    exe = splat_transform_exe()
    if exe is None:
        raise FileNotFoundError(f"cannot write {dst}: {missing_reason()}")
    src, dst = Path(src), Path(dst)
    suffix = ".compressed.ply" if dst.name.endswith(".compressed.ply") else dst.suffix
    tmp = dst.with_name(f".tmp-{os.getpid()}-{dst.name[: -len(suffix)]}{suffix}")
    cmd = [str(exe), "-q", "-w", *(["-g", "cpu"] if suffix in (".sog", ".html") else []), str(src)]
    if viewer_settings is not None:
        cmd += ["--viewer-settings", str(viewer_settings)]
    cmd.append(str(tmp))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"splat-transform did not write {dst} within {timeout_s:.0f} s") from None
    if out.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        message = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"splat-transform could not write {dst}: {' | '.join(message)}")
    os.replace(tmp, dst)
    return dst
