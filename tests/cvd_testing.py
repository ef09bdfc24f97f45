"""Helpers of the CVD model tests: the tiny config, randomised weights, small inputs, and the published file
layouts (CVD.ckpt, CameraCtrl.ckpt, raw AnimateDiff motion module, SD1.5 diffusers folder, single-file LDM
checkpoint) written at tiny widths from a model of ours."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from cvd.checkpoints import official_state_dicts
from cvd.model import CVDModel, OfficialFiles
from cvd.model_config import CVDModelConfig, load_model_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


def tiny_config(**changes) -> CVDModelConfig:
    """``configs/model/tiny.yaml`` with top-level fields replaced."""
    cfg = load_model_config(CONFIGS / "tiny.yaml")
    return dataclasses.replace(cfg, **changes) if changes else cfg


_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm)


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int, scale: float = 1.0) -> torch.nn.Module:
    """Every parameter drawn anew (zero-initialised projections included), deterministically, at scales that keep
    activations in range: weights ~ N(0, scale²/fan_in), biases ~ N(0, 0.1²), norm gains ~ 1 + N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(noise * scale / p[0].numel() ** 0.5)
            elif isinstance(m, _NORMS) and name == "weight":
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return module


def random_model(seed: int, config: CVDModelConfig | None = None) -> CVDModel:
    """A tiny model whose every weight is random (the CVSM and pose-merge projections are not zero)."""
    model = CVDModel.from_config(config or tiny_config(), seed=seed)
    for i, m in enumerate(model._weight_modules().values()):
        randomize_(m, seed * 10 + i)
    return model.eval()


def camera_inputs(num_videos: int = 2, num_frames: int = 3, size: int = 64):
    """``K [V, F, 3, 3]`` and ``world_from_cam [V, F, 4, 4]`` (float64) of videos leaving one common start."""
    K = torch.tensor([[0.9 * size, 0.0, size / 2], [0.0, 0.9 * size, size / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    K = K.expand(num_videos, num_frames, 3, 3).clone()
    c2w = torch.eye(4, dtype=torch.float64).expand(num_videos, num_frames, 4, 4).clone()
    t = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    for v in range(num_videos):
        angle = 2 * torch.pi * v / max(num_videos, 1)
        c2w[v, :, 0, 3] = 0.4 * t * torch.cos(torch.tensor(angle))
        c2w[v, :, 2, 3] = 0.4 * t * torch.sin(torch.tensor(angle))
    return K, c2w


def unet_inputs(model: CVDModel, rows: int, num_frames: int, size: int = 64, seed: int = 0):
    """Noisy latents [B, 4, F, h, w], timesteps [B] and text tokens [B, L, D] for a tiny UNet call."""
    g = torch.Generator().manual_seed(seed)
    lat = size // model.config.vae_scale_factor
    sample = torch.randn(rows, model.config.unet.in_channels, num_frames, lat, lat, generator=g)
    timestep = torch.full((rows,), 500, dtype=torch.long)
    text = torch.randn(rows, 8, model.config.unet.cross_attention_dim, generator=g)
    return sample, timestep, text


# ---------------------------------------------------------------------------------------------------- files


def write_official_files(model: CVDModel, folder: Path, *, vae_as_bin: bool = True) -> OfficialFiles:
    """``model``'s weights as the published files (tiny widths): CVD.ckpt, CameraCtrl.ckpt, a raw AnimateDiff
    motion module, and an SD1.5-style diffusers folder (text-encoder keys in the legacy ``text_model.`` layout
    with ``position_ids``, VAE as a ``.bin`` pickle when ``vae_as_bin``)."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = official_state_dicts(model.unet.unet, model.pose_encoder)
    torch.save({"unet_trainable_dict": sd["cvd"], "global_step": 100000}, folder / "CVD.ckpt")
    torch.save(
        {"pose_encoder_state_dict": sd["pose_encoder"], "attention_processor_state_dict": sd["attention_processor"]},
        folder / "CameraCtrl.ckpt",
    )
    torch.save(sd["motion"], folder / "mm.ckpt")
    sd15 = folder / "sd15"
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        (sd15 / name).mkdir(parents=True, exist_ok=True)
    cfg = model.config
    (sd15 / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **_jsonable(cfg.unet.diffusers_kwargs())}))
    save_file({k: v.contiguous() for k, v in sd["unet2d"].items()}, str(sd15 / "unet" / "diffusion_pytorch_model.safetensors"))
    (sd15 / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **_jsonable(cfg.vae.diffusers_kwargs())}))
    vae = {k: v.detach().clone() for k, v in model.vae.state_dict().items()}
    if vae_as_bin:
        torch.save(vae, sd15 / "vae" / "diffusion_pytorch_model.bin")
    else:
        save_file(vae, str(sd15 / "vae" / "diffusion_pytorch_model.safetensors"))
    text = {f"text_model.{k}": v.detach().clone() for k, v in model.text_encoder.state_dict().items()}
    text["text_model.embeddings.position_ids"] = torch.arange(cfg.text_encoder.max_position_embeddings)[None]
    save_file(text, str(sd15 / "text_encoder" / "model.safetensors"))
    model.text_encoder.config.to_json_file(str(sd15 / "text_encoder" / "config.json"))
    model.tokenizer.save_pretrained(str(sd15 / "tokenizer"))
    return OfficialFiles(cvd=folder / "CVD.ckpt", cameractrl=folder / "CameraCtrl.ckpt", motion=folder / "mm.ckpt", sd15=sd15)


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def to_ldm(model: CVDModel) -> dict[str, torch.Tensor]:
    """The 2D UNet, VAE and text encoder of ``model`` as one single-file LDM checkpoint (the original Stable
    Diffusion layout), plus the non-weight entries such files carry."""
    cfg = model.config
    lpb = cfg.unet.layers_per_block
    res = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
    out: dict[str, torch.Tensor] = {}
    unet2d = official_state_dicts(model.unet.unet, model.pose_encoder)["unet2d"]
    up_has_attn = {b: t.startswith("CrossAttn") for b, t in enumerate(cfg.unet.up_block_types)}
    for k, v in unet2d.items():
        m = re.match(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$", k)
        if m:
            kind, b, part, layer, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            i = 1 + b * (lpb + 1) + layer if kind == "down" else b * (lpb + 1) + layer
            blocks = "input_blocks" if kind == "down" else "output_blocks"
            if part == "resnets":
                for a, z in res:
                    rest = re.sub(rf"^{a}\.", f"{z}.", rest)
                new = f"{blocks}.{i}.0.{rest}"
            else:
                new = f"{blocks}.{i}.1.{rest}"
        else:
            new = _rename(k, [
                (r"^time_embedding\.linear_1\.", "time_embed.0."), (r"^time_embedding\.linear_2\.", "time_embed.2."),
                (r"^conv_in\.", "input_blocks.0.0."), (r"^conv_norm_out\.", "out.0."), (r"^conv_out\.", "out.2."),
                (r"^mid_block\.resnets\.0\.", "middle_block.0."), (r"^mid_block\.attentions\.0\.", "middle_block.1."),
                (r"^mid_block\.resnets\.1\.", "middle_block.2."),
            ])
            if new is None:
                m = re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)$", k)
                if m:
                    new = f"input_blocks.{1 + int(m.group(1)) * (lpb + 1) + lpb}.0.op.{m.group(2)}"
            if new is None:
                m = re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)$", k)
                if m:
                    b = int(m.group(1))
                    new = f"output_blocks.{b * (lpb + 1) + lpb}.{2 if up_has_attn[b] else 1}.conv.{m.group(2)}"
            if new and new.startswith("middle_block.") and new.split(".")[1] in ("0", "2"):
                head, tail = new.split(".", 2)[:2], new.split(".", 2)[2]
                for a, z in res:
                    tail = re.sub(rf"^{a}\.", f"{z}.", tail)
                new = f"{head[0]}.{head[1]}.{tail}"
        assert new is not None, f"no LDM name for {k}"
        out[f"model.diffusion_model.{new}"] = v
    n = len(cfg.vae.block_out_channels)
    for k, v in model.vae.state_dict().items():
        v = v.detach().clone()
        new = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m.group(1))}.block.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m.group(1))}.upsample.", new)
        new = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", new)
        if ".mid_block.attentions.0." in new:
            new = new.replace(".mid_block.attentions.0.", ".mid.attn_1.")
            for a, z in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
                new = new.replace(f".attn_1.{a}.", f".attn_1.{z}.")
            if v.ndim == 2:
                v = v[:, :, None, None]
        out[f"first_stage_model.{new}"] = v
    for k, v in model.text_encoder.state_dict().items():
        out[f"cond_stage_model.transformer.text_model.{k}"] = v.detach().clone()
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    out["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)
    out["model_ema.decay"] = torch.tensor(0.9999)
    return out
