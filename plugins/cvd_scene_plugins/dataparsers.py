"""nerfstudio dataparser entry point ``cvd-scene-data``; imports only the dataparser (no models: ns-train imports
every plugin at start and a datamanager import here would be circular)."""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from cvd_scene.fit.dataparser import CvdSceneDataParserConfig, install_error_hook

install_error_hook()  # a --data folder that cannot be used is one line, not a traceback

cvd_scene_dataparser = DataParserSpecification(
    config=CvdSceneDataParserConfig(),
    description="a cvd-scene run folder: registered frames (register/transforms.json) and sparse points",
)
"""``ns-train <method> --data RUN_DIR cvd-scene-data``."""
