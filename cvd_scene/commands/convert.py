"""``cvd-scene convert``: the published CVD, CameraCtrl, AnimateDiff and SD1.5 files -> one CVD model folder
(our saved format, read by ``cvd-scene generate --weights DIR``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

import tyro

from cvd_scene.commands.common import CliError, app

log = logging.getLogger("cvd_scene.commands.convert")


@app.command
def convert(
    out_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")],
    cvd: Path,
    cameractrl: Path,
    motion: Path,
    sd15: Path,
    base: Path | None = None,
    adapter: Path | None = None,
    adapter_scale: float = 1.0,
    model: str = "sd15",
    dtype: Literal["float16", "bfloat16", "float32"] = "float16",
    trust_pickle: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Convert the published weight files once into a CVD model folder (every key of every file accounted for).

    Args:
        out_dir: The model folder to write (must not exist or be empty, unless --overwrite).
        cvd: CVD.ckpt (the cross-view synchronization modules).
        cameractrl: CameraCtrl.ckpt (pose encoder and pose-injection merges, AnimateDiff v3 version).
        motion: AnimateDiff v3_sd15_mm.ckpt (motion modules).
        sd15: Stable Diffusion 1.5 as a diffusers folder (unet/, vae/, text_encoder/, tokenizer/).
        base: Optional single-file DreamBooth base (LDM layout, .safetensors or .ckpt) replacing the VAE, text
            encoder and 2D UNet weights it contains.
        adapter: Optional AnimateDiff domain-adapter LoRA (v3_sd15_adapter.ckpt), fused after the base.
        adapter_scale: Scale the adapter is fused at.
        model: Model config: a name in configs/model/ (sd15) or a YAML path.
        dtype: Dtype of the stored weights.
        trust_pickle: Unpickle .ckpt files fully instead of weights_only=True (only files from a trusted source).
        overwrite: Replace an existing OUT_DIR.
        quiet: Only warnings and errors.
        verbose: Debug logging.
    """
    import torch

    from cvd.checkpoints import CheckpointError
    from cvd.model import CVDModel, OfficialFiles
    from cvd.model_config import CVDModelConfig
    from cvd_scene.config import load_config
    from cvd_scene.logs import setup_logging

    setup_logging(quiet, verbose)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise CliError(f"{out_dir} exists and is not empty (pass --overwrite to replace it)")
    config = load_config(CVDModelConfig, "model", model)
    files = OfficialFiles(
        cvd=cvd, cameractrl=cameractrl, motion=motion, sd15=sd15, base=base, adapter=adapter, adapter_scale=adapter_scale,
        trust_pickle=trust_pickle,
    )
    log.info("loading the published files into the %s model ...", config.name)
    try:
        loaded = CVDModel.from_official(config, files, dtype=torch.float32)
    except CheckpointError as e:
        raise CliError(str(e)) from None
    sources = {
        name: {"path": str(path), "bytes": path.stat().st_size if path.is_file() else None}
        for name, path in (("cvd", cvd), ("cameractrl", cameractrl), ("motion", motion), ("sd15", sd15),
                           ("base", base), ("adapter", adapter))
        if path is not None
    }
    if adapter is not None:
        sources["adapter"]["scale"] = adapter_scale
    loaded.save_pretrained(out_dir, dtype=getattr(torch, dtype), sources=sources, overwrite=overwrite)
    log.info("wrote %s (%s; epipolar bias convention %s, recorded in cvd_model.json)", out_dir, dtype,
             loaded.config.epipolar_bias.convention)
