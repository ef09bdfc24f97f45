"""nerfstudio entry points of cvd-scene (import-light: ``ns-train`` and every other ``ns-*`` import them at start).

Also makes the ``ffmpeg`` that scripts/install.sh links into the virtualenv's ``bin`` visible to nerfstudio
(``ns-render`` looks it up on ``PATH`` and exits without it, even for image output) when the virtualenv's
scripts are run without activating it.
"""

import os
import shutil
import sys


def _venv_ffmpeg_on_path() -> None:
    bin_dir = os.path.dirname(sys.executable)
    if shutil.which("ffmpeg") is None and os.access(os.path.join(bin_dir, "ffmpeg"), os.X_OK):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


_venv_ffmpeg_on_path()
