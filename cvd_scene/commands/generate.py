"""``cvd-scene generate``: make the N videos of a planned run (reference renderer or the CVD model)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from cvd_scene.commands.common import CliError, Overrides, RunDir, app, run_single_stage
from cvd_scene.config import parse_overrides
from cvd_scene.generate.picture import PictureError, image_overrides

log = logging.getLogger(__name__)


def generate_overrides(
    overrides: tuple[str, ...],
    generator: str | None = None,
    model: str | None = None,
    weights: str | None = None,
    prompt: str | None = None,
) -> dict:
    """The config overrides of ``cvd-scene generate``: KEY=VALUE items plus the command's options (paths made
    absolute, since the stage does not run from the current directory)."""
    ov = parse_overrides(list(overrides))
    gen = ov.setdefault("generate", {})
    if not isinstance(gen, dict):
        raise CliError(
            f"override generate={gen!r} must set keys of the generate section, e.g. generate.scene=table"
        )
    if generator is not None:
        gen["generator"] = generator
    if model is not None:
        gen["model"] = model
    if weights is not None:
        if not Path(weights).is_dir():
            raise CliError(f"--weights {weights}: no such folder")
        gen["weights"] = str(Path(weights).resolve())
    if prompt is not None:
        ov["prompt"] = prompt
    if not gen:
        del ov["generate"]
    return ov


@app.command(name="generate")
def generate_command(
    run_dir: RunDir,
    overrides: Overrides = (),
    generator: Literal["reference", "cvd"] | None = None,
    model: str | None = None,
    weights: str | None = None,
    prompt: str | None = None,
    image: str | None = None,
    preset: str | None = None,
    redo: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Make the videos of RUN_DIR's plan: generate/frames, videos/*.mp4, contact_sheet.png, transforms.json,
    report.json (and, for the reference generator, gt/depth and gt/scene.glb).

    Args:
        run_dir: The run folder (its plan stage must have run).
        overrides: Config overrides as KEY=VALUE, e.g. generate.scene=table generate.samples_per_pixel=1.
        generator: reference (built-in CPU renderer of procedural scenes) or cvd (the diffusion model).
        model: CVD model config name in configs/model/ (tiny, tiny-trained, sd15).
        weights: CVD: a local folder of converted weights (cvd-scene convert) or of our saved format.
        prompt: Text prompt; with the reference generator its words pick the scene kind, colours and objects.
        image: CVD: a picture that becomes frame 0 of every video (the plan's videos must start at one camera);
            the prompt is then optional (empty unless given).
        preset: Run preset: a name in configs/run/ or a path to a YAML file (default: the run folder's own config,
            else demo).
        redo: Generate again even if the stage already finished with this config.
        quiet: Only warnings and errors, no progress bars.
        verbose: Debug logging.
    """
    ov = generate_overrides(overrides, generator, model, weights, prompt)
    if image is not None:
        try:
            image_overrides(ov, image)
        except PictureError as e:
            raise CliError(str(e)) from None
    run_single_stage("generate", run_dir, preset, ov, redo, quiet, verbose)
