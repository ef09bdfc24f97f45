"""The CVD model bundle: UNet (with motion modules, pose injection and CVSMs), pose encoder, VAE, text encoder,
tokenizer and scheduler, built from a :class:`~cvd.model_config.CVDModelConfig` with random weights, from the
published files, or from our saved format.

Entry points:

* :meth:`CVDModel.from_config` — random weights (tests, the CPU path, benchmarks).
* :meth:`CVDModel.from_official` — the published files (:class:`OfficialFiles`): ``CVD.ckpt``, ``CameraCtrl.ckpt``,
  AnimateDiff ``v3_sd15_mm.ckpt`` (+ domain-adapter LoRA), SD1.5 as a diffusers folder, optionally a single-file
  LDM base (DreamBooth) that replaces the VAE, text encoder and 2D UNet weights it contains. Every key of every
  file is accounted for (:func:`cvd.checkpoints.load_exact`).
* :meth:`CVDModel.save_pretrained` / :meth:`CVDModel.from_pretrained` — our format: a folder with
  ``cvd_model.json`` (format, version, the model config) and one sub-folder per component (``config.json`` +
  safetensors; ``tokenizer/``; ``scheduler/scheduler_config.json``).
* :meth:`CVDModel.encode_cameras` (Plücker rays -> pose features, once per sample) and
  :meth:`CVDModel.encode_text`: :func:`camera_features` and :func:`text_embeddings`, the encoders the pipeline
  uses too.

The epipolar-bias convention (``config.epipolar_bias.convention``) belongs to the weights: the published files
were trained with the release's builder, our trainer's models with ours. A config that leaves it None gets it
from the source: ``release`` from the published files, ``ours`` for random weights (what our trainer starts
from), and for a saved folder the value in its ``cvd_model.json``, or, in a file written before the field
existed, ``release`` when its ``sources`` name the published files (``cvd-scene convert``) and ``ours``
otherwise (:func:`convention_from_sources`). ``save_pretrained`` always writes the resolved value.

Imports torch, diffusers, transformers, safetensors, accelerate; must never import ``cvd_scene``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import string
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from cvd.checkpoints import (
    CheckpointError,
    check_tables,
    convert_ldm_checkpoint,
    fuse_animatediff_lora,
    load_exact,
    map_motion_state,
    map_pose_encoder_state,
    modern_vae_names,
    motion_key_from_official,
    read_state_file,
    strip_text_model_prefix,
)
from cvd.geometry import EpipolarBiasConfig, plucker_embedding
from cvd.model_config import CVDModelConfig, config_from_dict, config_to_dict
from cvd.pose_encoder import CameraPoseEncoder
from cvd.unet import CVDUNet

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "CVDModel",
    "OfficialFiles",
    "build_tiny_tokenizer",
    "camera_features",
    "convention_from_sources",
    "text_embeddings",
    "with_bias_convention",
]

MODEL_FORMAT = "cvd-scene/cvd-model"
MODEL_FORMAT_VERSION = 1
_WEIGHTS = {
    "unet": "diffusion_pytorch_model.safetensors",
    "pose_encoder": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}
# Weight file names of a diffusers folder, most preferred first.
_DIFFUSERS_WEIGHT_NAMES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
             "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
            "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors", "pytorch_model.fp16.bin"),
}


@dataclass(kw_only=True)
class OfficialFiles:
    """Local paths of the published weight files."""

    cvd: Path
    """``CVD.ckpt``: ``unet_trainable_dict`` with the CVSM weights."""
    cameractrl: Path
    """``CameraCtrl.ckpt``: ``pose_encoder_state_dict`` and ``attention_processor_state_dict``."""
    motion: Path
    """AnimateDiff ``v3_sd15_mm.ckpt`` (raw motion-module keys; a diffusers-layout file also works)."""
    sd15: Path
    """Stable Diffusion 1.5 as a diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``)."""
    base: Path | None = None
    """Optional single-file LDM checkpoint (DreamBooth base) replacing the VAE, text encoder and 2D UNet weights
    it contains."""
    adapter: Path | None = None
    """Optional AnimateDiff domain-adapter LoRA (``v3_sd15_adapter.ckpt``), fused into the 2D UNet after the base."""
    adapter_scale: float = 1.0
    """Scale the adapter LoRA is fused at."""
    trust_pickle: bool = False
    """Unpickle ``.ckpt`` files fully instead of ``weights_only=True`` (only for files from a trusted source, e.g.
    old Lightning checkpoints that pickle training objects)."""


def convention_from_sources(sources: dict | None) -> str:
    """The bias convention of saved weights whose ``cvd_model.json`` does not record one: ``release`` when the
    provenance names the published files (``cvd-scene convert`` stores ``cvd`` and ``cameractrl`` paths),
    ``ours`` otherwise (models trained by ``cvd-scene train``)."""
    return "release" if sources and {"cvd", "cameractrl"} <= set(sources) else "ours"


def with_bias_convention(config: CVDModelConfig, convention: str) -> CVDModelConfig:
    """``config`` with ``epipolar_bias.convention`` set to ``convention`` if it is None (else unchanged)."""
    if config.epipolar_bias.convention is not None:
        return config
    return dataclasses.replace(config, epipolar_bias=dataclasses.replace(config.epipolar_bias, convention=convention))


def build_tiny_tokenizer(max_length: int = 77):
    """A character-level CLIP tokenizer built in code (no files): lower-case letters, digits and a few marks,
    each as a word-internal and a word-final (``</w>``) token; ids 0/1 are start/end (end also pads and stands
    for unknown characters)."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ",.!?'-"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


@dataclass(eq=False)
class CVDModel:
    """Every component of a CVD model (see the module docstring for the constructors)."""

    config: CVDModelConfig
    unet: CVDUNet
    pose_encoder: CameraPoseEncoder
    vae: nn.Module
    """diffusers ``AutoencoderKL``."""
    text_encoder: nn.Module
    """transformers ``CLIPTextModel``."""
    tokenizer: object
    """transformers CLIP tokenizer."""
    scheduler: object
    """diffusers ``DDIMScheduler`` with the trained noise schedule."""

    # ------------------------------------------------------------------------------------------------ build

    @classmethod
    def from_config(
        cls,
        config: CVDModelConfig,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = 0,
        tokenizer: object | None = None,
    ) -> CVDModel:
        """Random weights (``seed``: deterministic, without touching the global RNG). The tokenizer is built in
        code for ``config.tokenizer == "tiny"``; a ``folder`` config needs ``tokenizer`` passed in."""
        config = with_bias_convention(config, "ours")
        tok = tokenizer if tokenizer is not None else _tokenizer_for(config, None)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            with torch.device(device):
                parts = _build_components(config)
        model = cls(config=config, tokenizer=tok, scheduler=_scheduler(config), **parts)
        return model.to(device=device, dtype=dtype)

    @classmethod
    def from_official(
        cls,
        config: CVDModelConfig,
        files: OfficialFiles,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> CVDModel:
        """The model from the published files, every key accounted for (see :class:`OfficialFiles`). A config
        whose bias convention is None gets the release's, the one these weights were trained with."""
        config = with_bias_convention(config, "release")
        sd15 = Path(files.sd15)
        if not sd15.is_dir():
            raise FileNotFoundError(f"--sd15: the Stable Diffusion 1.5 diffusers folder {sd15} does not exist")
        for name, path in (("cvd", files.cvd), ("cameractrl", files.cameractrl), ("motion", files.motion),
                           ("base", files.base), ("adapter", files.adapter)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"--{name}: the file {path} does not exist")
        trust = files.trust_pickle
        parts = _build_empty(config, dtype)
        unet: CVDUNet = parts["unet"]
        inner = unet.unet

        def is_2d(k: str) -> bool:
            return not any(s in k for s in (".motion_modules.", ".epi_modules.", ".processor."))

        # 1. The frozen 2D stack: a DreamBooth base's components where it has them, SD1.5's otherwise.
        base = None
        if files.base is not None:
            label = f"base checkpoint ({files.base})"
            raw = read_state_file(files.base, unwrap="state_dict", label="base checkpoint", trust_pickle=trust)
            base = convert_ldm_checkpoint(
                raw, config.unet.diffusers_kwargs(), config.vae.diffusers_kwargs(), label=label
            )
            del raw
        for name, module, from_base, expected in (
            ("unet", inner, base.unet if base else None, is_2d),
            ("vae", parts["vae"], base.vae if base else None, None),
            ("text_encoder", parts["text_encoder"], base.text_encoder if base else None, None),
        ):
            if from_base:
                load_exact(module, from_base, label=f"base checkpoint ({files.base}) {name}", expected=expected, device=device)
            else:
                path = _diffusers_weights(sd15, name)
                state = read_state_file(path, label=f"SD1.5 {name}", trust_pickle=trust)
                if name == "text_encoder":
                    state = strip_text_model_prefix(state)
                elif name == "vae":
                    state = modern_vae_names(state)
                load_exact(module, state, label=f"SD1.5 {name} ({path})", expected=expected, device=device)
        del base
        # 2. The AnimateDiff domain adapter, fused on top of whatever 2D weights were loaded.
        if files.adapter is not None:
            lora = read_state_file(files.adapter, unwrap="state_dict", label="adapter", trust_pickle=trust)
            n = fuse_animatediff_lora(inner, lora, files.adapter_scale, label=f"adapter ({files.adapter})")
            log.info("fused %d adapter LoRA layers at scale %g", n, files.adapter_scale)
        # 3. Motion modules.
        raw = read_state_file(files.motion, unwrap="state_dict", label="motion module", trust_pickle=trust)
        weights, tables = map_motion_state(raw)
        label = f"motion module ({files.motion})"
        check_tables(tables, dict(inner.named_buffers()), label=label, rebuilt_key=motion_key_from_official)
        load_exact(inner, weights, label=label, device=device,
                   expected=lambda k: ".motion_modules." in k and ".processor." not in k)
        # 4. CameraCtrl: pose encoder and the pose-injection merges.
        label = f"CameraCtrl pose_encoder_state_dict ({files.cameractrl})"
        weights, tables = map_pose_encoder_state(
            read_state_file(files.cameractrl, inner="pose_encoder_state_dict", label="CameraCtrl", trust_pickle=trust)
        )
        check_tables(tables, dict(parts["pose_encoder"].named_buffers()), label=label)
        load_exact(parts["pose_encoder"], weights, label=label, device=device)
        weights, _ = map_motion_state(
            read_state_file(files.cameractrl, inner="attention_processor_state_dict", label="CameraCtrl", trust_pickle=trust)
        )
        load_exact(inner, weights, label=f"CameraCtrl attention_processor_state_dict ({files.cameractrl})",
                   expected=lambda k: ".processor.qkv_merge." in k, device=device)
        # 5. CVD's synchronization modules.
        cvd = read_state_file(files.cvd, inner="unet_trainable_dict", label="CVD", trust_pickle=trust)
        load_exact(inner, cvd,
                   label=f"CVD unet_trainable_dict ({files.cvd})", expected=lambda k: ".epi_modules." in k,
                   device=device)
        tok = _tokenizer_for(config, sd15 / "tokenizer")
        model = cls(config=config, tokenizer=tok, scheduler=_scheduler(config), **parts)
        model._check_materialised("the published files")
        return model.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------------ our format

    def save_pretrained(self, path: str | Path, *, dtype: torch.dtype | None = None, sources: dict | None = None,
                        overwrite: bool = False) -> Path:
        """Write the model as a folder (atomically: a temporary sibling renamed into place). ``dtype``: the
        dtype of the stored floating weights (default: as they are); ``sources``: provenance stored in
        ``cvd_model.json``."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
            raise FileExistsError(f"{path} exists and is not empty (pass overwrite=True to replace it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            for name, module in self._weight_modules().items():
                (tmp / name).mkdir()
                state = {
                    k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
                    .cpu().contiguous()
                    for k, v in module.state_dict().items()
                }
                save_file(state, str(tmp / name / _WEIGHTS[name]), metadata={"format": "pt"})
            _write_json(tmp / "unet" / "config.json", dict(self.unet.unet.config))
            _write_json(tmp / "vae" / "config.json", dict(self.vae.config))
            self.text_encoder.config.to_json_file(str(tmp / "text_encoder" / "config.json"))
            _write_json(tmp / "pose_encoder" / "config.json", config_to_dict(self.config.pose_encoder))
            self.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            self.scheduler.save_config(str(tmp / "scheduler"))
            stored = dtype or self.unet.dtype
            config = with_bias_convention(self.config, convention_from_sources(sources))
            _write_json(tmp / "cvd_model.json", {
                "format": MODEL_FORMAT,
                "version": MODEL_FORMAT_VERSION,
                "dtype": str(stored).removeprefix("torch."),
                "config": config_to_dict(config),
                "sources": sources or {},
            })
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        config: CVDModelConfig | None = None,
    ) -> CVDModel:
        """Load a folder written by :meth:`save_pretrained` (every key of every component accounted for).
        ``dtype``: default the stored one. ``config``: override the stored config (same shapes, other settings
        such as the bias mode or pose-injection scale). A bias convention left None (in the file or in
        ``config``) is the file's, else :func:`convention_from_sources` of its provenance."""
        path = Path(path)
        meta_path = path / "cvd_model.json"
        meta = _read_meta(path)
        if config is None:
            config = config_from_dict(CVDModelConfig, meta["config"])
            stored_convention = config.epipolar_bias.convention
        else:  # the override replaces the stored config: of it only the bias convention is read
            stored_convention = _stored_convention(meta, meta_path)
        config = with_bias_convention(config, stored_convention or convention_from_sources(meta.get("sources")))
        dtype = dtype or getattr(torch, meta.get("dtype", "float32"))
        parts = _build_empty(config, dtype)
        for name, module in parts.items():
            file = path / name / _WEIGHTS[name]
            load_exact(module, read_state_file(file, label=name), label=f"{name} ({file})", device=device)
        tok = _tokenizer_for(config, path / "tokenizer", saved=True)
        model = cls(config=config, tokenizer=tok, scheduler=_scheduler(config), **parts)
        model._check_materialised(str(path))
        return model.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------------ use

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CVDModel:
        for module in self._weight_modules().values():
            # nn.Module.to directly: diffusers' override warns whenever a dtype argument is present at all.
            nn.Module.to(module, device=device, dtype=dtype)
        return self

    def eval(self) -> CVDModel:
        for module in self._weight_modules().values():
            module.eval()
        return self

    def encode_cameras(
        self,
        K: Tensor,  # [V, F, 3, 3] pixels of the generated image
        world_from_cam: Tensor,  # [V, F, 4, 4] OpenCV axes, each video relative to its first frame, model units
        height: int,
        width: int,
    ) -> list[Tensor]:  # per UNet level [V, F, C_l, h_l, w_l]
        """Camera features of every UNet level (once per sample: they do not depend on the timestep):
        :func:`camera_features` of this model's pose encoder."""
        return camera_features(self.pose_encoder, K, world_from_cam, height, width)

    def encode_text(self, prompts: Sequence[str]) -> Tensor:  # [N, L, D]
        """Text tokens of each prompt: :func:`text_embeddings` of this model's tokenizer and text encoder."""
        return text_embeddings(self.tokenizer, self.text_encoder, prompts)

    def _weight_modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "pose_encoder": self.pose_encoder, "vae": self.vae, "text_encoder": self.text_encoder}

    def _check_materialised(self, source: str) -> None:
        left = [f"{name}.{k}" for name, m in self._weight_modules().items() for k, v in m.state_dict().items() if v.is_meta]
        if left:
            raise CheckpointError(f"{source}: {len(left)} weights were never loaded, e.g. {left[:20]}")


# ---------------------------------------------------------------------------------------------------------- encoders


@torch.no_grad()
def camera_features(
    pose_encoder: nn.Module,
    K: Tensor,  # [V, F, 3, 3] pixels of the generated image
    world_from_cam: Tensor,  # [V, F, 4, 4] OpenCV axes, each video relative to its first frame, model units
    height: int,
    width: int,
    device: torch.device | None = None,
) -> list[Tensor]:  # per UNet level [V, F, C_l, h_l, w_l]
    """Camera features of every UNet level: float32 Plücker rays of the ``height`` x ``width`` image on ``device``
    (default: where the pose encoder's weights are; under offloading, where it runs) through the pose encoder. The
    one camera encoder of :class:`CVDModel` and :class:`~cvd.pipeline.CVDPipeline`."""
    if K.ndim != 4 or world_from_cam.ndim != 4:
        raise ValueError(f"K must be [V, F, 3, 3] and world_from_cam [V, F, 4, 4], got {K.shape=} {world_from_cam.shape=}")
    if device is None:
        device = pose_encoder.encoder_conv_in.weight.device
    rays = plucker_embedding(
        K.to(device, torch.float32), world_from_cam.to(device, torch.float32), height, width
    )  # [V, F, 6, H, W]
    return list(pose_encoder(rays))


@torch.no_grad()
def text_embeddings(
    tokenizer, text_encoder: nn.Module, prompts: Sequence[str], device: torch.device | None = None
) -> Tensor:  # [N, L, D]
    """Text tokens of each prompt, padded (and truncated) to the tokenizer's maximum length, encoded on ``device``
    (default: where the text encoder's weights are). The one text encoder of :class:`CVDModel` and
    :class:`~cvd.pipeline.CVDPipeline`."""
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    if device is None:
        device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]


# ---------------------------------------------------------------------------------------------------------- helpers


def _build_components(config: CVDModelConfig) -> dict[str, nn.Module]:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    return {
        "unet": CVDUNet(config),
        "pose_encoder": CameraPoseEncoder(config),
        "vae": AutoencoderKL(**config.vae.diffusers_kwargs()),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**config.text_encoder.transformers_kwargs())),
    }


def _build_empty(config: CVDModelConfig, dtype: torch.dtype) -> dict[str, nn.Module]:
    """Components with parameters on the meta device (buffers real), to be filled by loads."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        parts = _build_components(config)
    if dtype != torch.float32:
        for m in parts.values():
            nn.Module.to(m, dtype=dtype)
    return parts


def _scheduler(config: CVDModelConfig):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**config.scheduler.diffusers_kwargs())


def _tokenizer_for(config: CVDModelConfig, folder: Path | None, saved: bool = False):
    if config.tokenizer == "tiny" and not saved:
        return build_tiny_tokenizer(config.text_encoder.max_position_embeddings)
    if folder is None:
        raise ValueError(f"model config {config.name!r} reads its tokenizer from a weights folder; pass tokenizer=")
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def _diffusers_weights(folder: Path, component: str) -> Path:
    sub = folder / component
    for name in _DIFFUSERS_WEIGHT_NAMES[component]:
        if (sub / name).is_file():
            return sub / name
    raise FileNotFoundError(
        f"--sd15 {folder}: no {component} weights; looked for {', '.join(str(sub / n) for n in _DIFFUSERS_WEIGHT_NAMES[component])}"
    )


def _read_meta(path: Path) -> dict:
    """A saved model folder's ``cvd_model.json``, its format and version checked."""
    meta_path = path / "cvd_model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a CVD model folder: {meta_path} is missing (make one with `cvd-scene convert`)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    if meta.get("version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{meta_path}: version {meta.get('version')!r}, this code reads {MODEL_FORMAT_VERSION}")
    return meta


def saved_config(path: str | Path) -> CVDModelConfig:
    """The config a folder written by :meth:`CVDModel.save_pretrained` stores (its bias convention resolved as
    :meth:`CVDModel.from_pretrained` resolves it): the architecture to fine-tune it with."""
    meta = _read_meta(Path(path))
    config = config_from_dict(CVDModelConfig, meta["config"])
    return with_bias_convention(config, config.epipolar_bias.convention or convention_from_sources(meta.get("sources")))


def _stored_convention(meta: dict, meta_path: Path) -> str | None:
    """The bias convention a ``cvd_model.json`` records (None when it records none), without parsing the rest of
    its model config."""
    stored = meta.get("config")
    bias = stored.get("epipolar_bias") if isinstance(stored, dict) else None
    convention = bias.get("convention") if isinstance(bias, dict) else None
    try:
        EpipolarBiasConfig(convention=convention)  # the allowed values
    except ValueError as e:
        raise ValueError(f"{meta_path}: config.epipolar_bias: {e}") from None
    return convention


def _write_json(path: Path, data: dict) -> None:
    def default(o):
        if isinstance(o, (tuple, set)):
            return list(o)
        return str(o)

    path.write_text(json.dumps(data, indent=1, default=default))

