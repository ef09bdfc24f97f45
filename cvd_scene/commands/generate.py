"""``cvd-scene generate``: make the N videos of a planned run (reference renderer or the CVD model)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from cvd_scene.cli import CliError, Overrides, RunDir, app, run_single_stage
from cvd_scene.config import parse_overrides

log = logging.getLogger(__name__)


def image_overrides(ov: dict, image: str, plan_size: tuple[int, int] | None = None) -> dict:
    """Add ``--image FILE`` to the overrides ``ov`` (changed in place and returned): the picture is read now, so
    a missing or unreadable file is one line before anything runs; ``generate.image`` is its absolute path; the
    prompt is empty unless given; with ``plan_size`` (width, height: the plan is still to be made) the plan's
    ``fov_x_deg`` comes from the EXIF 35 mm-equivalent focal length when the picture has one and the field of view
    was not set on the command line."""
    from cvd_scene.picture import PictureError, fov_x_deg, read_picture

    try:
        picture = read_picture(image)
    except PictureError as e:
        raise CliError(str(e)) from None
    gen = ov.setdefault("generate", {})
    if not isinstance(gen, dict):
        raise CliError(f"override generate={gen!r} must set keys of the generate section")
    gen["image"] = os.path.abspath(image)
    ov.setdefault("prompt", "")
    if plan_size is not None:
        plan = ov.setdefault("plan", {})
        if not isinstance(plan, dict):
            raise CliError(f"override plan={plan!r} must set keys of the plan section")
        fov = fov_x_deg(picture, *plan_size)
        if fov is not None and "fov_x_deg" not in plan:
            plan["fov_x_deg"] = round(fov, 2)
            log.info(
                "--image: %.1f deg field of view from the EXIF focal length (%g mm, 35 mm equivalent) at %dx%d",
                fov, picture.focal_35mm_mm, *plan_size,
            )  # fmt: skip
        if not plan:
            del ov["plan"]
    return ov


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
        image_overrides(ov, image)
    run_single_stage("generate", run_dir, preset, ov, redo, quiet, verbose)
