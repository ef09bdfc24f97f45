"""Which CVD model ``cvd-scene generate --generator cvd`` runs: a model config name and/or a weights folder ->
a loaded :class:`cvd.model.CVDModel`.

* ``--weights DIR``: a folder in our saved format (``cvd-scene convert`` of the published files, or a model our
  trainer saved); its own ``cvd_model.json`` carries the config. Every file it needs is checked first, and a
  missing one is named with its full path.
* ``--model tiny``: ``configs/model/tiny.yaml`` with random weights (tests, the CPU path).
* ``--model NAME`` otherwise: the committed model folder ``models/NAME/`` at the top of the repository (or
  ``$CVD_SCENE_MODELS/NAME``), e.g. ``tiny-trained``; ``sd15`` has no committed weights and needs ``--weights``.

Model configs are read strictly through :func:`cvd_scene.config.load_config`. Imports torch and ``cvd`` inside
the functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from cvd.model import CVDModel

log = logging.getLogger(__name__)

RANDOM_WEIGHT_MODELS = ("tiny",)

_KEPT: dict | None = None
"""Models kept loaded by :func:`keep_models_loaded` (None: every load reads the weights anew)."""
_LOADS = 0
"""How many times this process has built or read a model (for batch workers' records)."""


@contextlib.contextmanager
def keep_models_loaded():
    """Within this context, :func:`load_cvd_model` keeps every model it loads and returns the same one for the same
    name, weights, device, dtype (and seed, for random weights): a process that serves many generate stages (a
    batch's model actor) reads the weights once. Models are used read-only (``eval``, no gradients)."""
    global _KEPT
    outer = _KEPT
    _KEPT = {} if outer is None else outer
    try:
        yield _KEPT
    finally:
        _KEPT = outer


def model_loads() -> int:
    """How many models this process has built or read so far."""
    return _LOADS
"""Model names that run with random weights when no folder is given (test models)."""

SAVED_FORMAT_FILES = (
    "cvd_model.json",
    "unet/diffusion_pytorch_model.safetensors",
    "pose_encoder/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "tokenizer/",
)
"""What a model folder in our saved format holds (``cvd.model.CVDModel.save_pretrained``)."""


def default_models_dir() -> Path:
    """Committed model folders: ``$CVD_SCENE_MODELS`` or ``models/`` at the top of the repository."""
    env = os.environ.get("CVD_SCENE_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "models"


def missing_files(folder: Path) -> list[Path]:
    """The files of our saved format that ``folder`` lacks (full paths)."""
    out = []
    for rel in SAVED_FORMAT_FILES:
        p = folder / rel.rstrip("/")
        if not (p.is_dir() if rel.endswith("/") else p.is_file()):
            out.append(p)
    return out


def load_cvd_model(
    name: str,
    weights: str | os.PathLike | None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    models_dir: Path | None = None,
    keep: bool = True,
) -> tuple[CVDModel, dict]:
    """The model and a description for the report (``name``, ``weights``: folder path or ``random``, ``dtype``).

    Inside :func:`keep_models_loaded` a model loaded before with the same arguments is returned again, and the
    model loaded now is kept unless ``keep`` is False (for callers that attach hooks to it, such as CPU offload)."""
    global _LOADS
    key = (name, None if weights is None else str(Path(weights).resolve()), str(device), str(dtype),
           seed if weights is None and name in RANDOM_WEIGHT_MODELS else None, str(models_dir))  # fmt: skip
    if keep and _KEPT is not None and key in _KEPT:
        model, info = _KEPT[key]
        return model, dict(info)
    import torch

    from cvd.model import CVDModel
    from cvd.model_config import CVDModelConfig
    from cvd_scene.config import load_config

    folder: Path | None = None
    if weights is not None:
        folder = Path(weights).resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"--weights {weights}: no such folder")
    elif name not in RANDOM_WEIGHT_MODELS:
        from cvd_scene.paths import check_id, join_inside

        root = models_dir or default_models_dir()
        candidate = join_inside(root, check_id(name, "generate.model"))
        if not candidate.is_dir():
            hint = (
                "make it with `cvd-scene convert --cvd CVD.ckpt --cameractrl CameraCtrl.ckpt --motion v3_sd15_mm.ckpt "
                "--sd15 SD15_DIR OUT_DIR` and pass --weights OUT_DIR"
                if name == "sd15"
                else "train it with `cvd-scene train` or pass --weights DIR"
            )
            raise FileNotFoundError(
                f"model {name!r} has no weights: looked for the committed folder {candidate} (none); {hint}. "
                f"Random-weight test models: {', '.join(RANDOM_WEIGHT_MODELS)}"
            )
        folder = candidate
    if folder is not None:
        missing = missing_files(folder)
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a complete CVD model folder; missing: {', '.join(str(p) for p in missing)} "
                "(a folder written by `cvd-scene convert` or CVDModel.save_pretrained has all of them)"
            )
        model = CVDModel.from_pretrained(folder, device=device, dtype=dtype)
        info = {"name": model.config.name, "weights": str(folder)}
    else:
        config = load_config(CVDModelConfig, "model", name)
        model = CVDModel.from_config(config, device=device, dtype=dtype or torch.float32, seed=seed)
        info = {"name": config.name, "weights": "random", "weights_seed": seed}
        log.info("the %s model runs with random weights (a test model: its videos are noise-like)", name)
    info["dtype"] = str(model.unet.dtype).removeprefix("torch.")
    _LOADS += 1
    model = model.eval()
    if keep and _KEPT is not None:
        _KEPT[key] = (model, dict(info))
    return model, info
