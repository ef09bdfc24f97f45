"""Reading weight files and loading them with every key accounted for.

* :func:`read_state_file`: a ``.safetensors`` file or a torch pickle (``.ckpt``/``.pt``/``.pth``/``.bin``,
  read with ``weights_only=True``), optionally the dict under one top-level key.
* :func:`load_exact`: the one way weights enter a module here. Every key of the file must be a key of the module
  with the same shape, and every key the file is responsible for must be in it; otherwise a
  :class:`CheckpointError` names the file and lists the missing keys, the unexpected keys (first 20 of each,
  with counts) and the wrong shapes. Buffers the published files do not store (listed per loader) are rebuilt
  by the model, never reported missing; position tables the files do store are checked against the rebuilt
  ones (at the precision the file stores them) and dropped.
* The key layouts of the published files (AnimateDiff v3 ``v3_sd15_mm.ckpt``, CameraCtrl's
  ``pose_encoder_state_dict`` / ``attention_processor_state_dict``, CVD's ``unet_trainable_dict``) and their
  mapping onto our modules, both ways (:func:`official_state_dicts` writes our weights in the published layout).
* :func:`fuse_animatediff_lora`: the AnimateDiff domain-adapter LoRA fused into the spatial attention weights.
* :func:`convert_ldm_checkpoint`: a single-file LDM (original Stable Diffusion / DreamBooth) checkpoint to
  diffusers keys with diffusers' own offline converters, accounting for every source key.

Imports torch, safetensors and diffusers; must never import ``cvd_scene``.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "LDMComponents",
    "Mismatch",
    "compare_keys",
    "convert_ldm_checkpoint",
    "fuse_animatediff_lora",
    "is_rebuilt_buffer",
    "load_exact",
    "map_motion_state",
    "map_pose_encoder_state",
    "modern_vae_names",
    "motion_key_from_official",
    "motion_key_to_official",
    "official_state_dicts",
    "read_state_file",
    "strip_text_model_prefix",
    "table_tolerance",
]

SHOW = 20
"""How many keys of each kind an error message lists."""

_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(ValueError):
    """A weight file that does not match the model; the message names the file and every mismatch."""


# ----------------------------------------------------------------------------------------------------------
# reading files


def read_state_file(
    path: str | Path,
    *,
    inner: str | None = None,
    unwrap: str | None = None,
    label: str | None = None,
    trust_pickle: bool = False,
) -> dict[str, Tensor]:
    """The tensors of a weight file, by key (``inner``: the dict stored under that top-level key, which must
    exist; ``unwrap``: that key's dict if the file has one, else the top level, e.g. Lightning's ``state_dict``).

    ``.safetensors`` is read with safetensors; ``.ckpt``/``.pt``/``.pth``/``.bin`` with ``torch.load(...,
    weights_only=True)`` on the CPU, unless ``trust_pickle`` (full unpickling: only for files from a source you
    trust, e.g. old Lightning checkpoints that pickle training callbacks). A missing file, an unreadable one or a
    missing ``inner`` key raises :class:`CheckpointError` (``FileNotFoundError`` for a missing file) naming
    ``label`` and the path; entries that are not tensors (step counters, ...) are dropped.
    """
    path = Path(path)
    what = f"{label} ({path})" if label else str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{what}: not a readable safetensors file ({e})") from None
    elif suffix in _PICKLE_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
        # weights_only refusals, and what the unpickler raises on a file that is no pickle (text: IndexError)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, IndexError, KeyError, TypeError) as e:
            hint = "" if trust_pickle else " (if you trust its source, allow full unpickling: --trust-pickle)"
            raise CheckpointError(
                f"{what}: cannot be read as a torch weights file with weights_only={not trust_pickle}{hint}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
    else:
        raise CheckpointError(f"{what}: unknown weight file type {suffix!r} (expected .safetensors, .ckpt, .pt, .pth, .bin)")
    if inner is not None:
        if not isinstance(obj, Mapping) or inner not in obj:
            keys = sorted(obj)[:SHOW] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{what}: has no {inner!r} entry (top-level keys: {keys})")
        obj = obj[inner]
    elif unwrap is not None and isinstance(obj, Mapping) and isinstance(obj.get(unwrap), Mapping):
        obj = obj[unwrap]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what}: expected a dict of tensors, got {type(obj).__name__}")
    skipped = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if skipped:
        log.info("%s: %d entries are not tensors and were skipped: %s", what, len(skipped), skipped[:SHOW])
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


# ----------------------------------------------------------------------------------------------------------
# accounting


@dataclass
class Mismatch:
    """How a file's keys differ from what the model expects of it."""

    missing: list[str] = field(default_factory=list)
    """Keys the file is responsible for but lacks."""
    unexpected: list[str] = field(default_factory=list)
    """Keys of the file the model does not have."""
    wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    """``(key, shape in the file, shape in the model)``."""

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def message(self, label: str) -> str:
        lines = [f"{label} does not match the model:"]
        for name, keys in (("missing keys", self.missing), ("unexpected keys", self.unexpected)):
            if keys:
                more = f", first {SHOW}" if len(keys) > SHOW else ""
                lines.append(f"  {name} ({len(keys)}{more}): " + ", ".join(sorted(keys)[:SHOW]))
        if self.wrong_shape:
            more = f", first {SHOW}" if len(self.wrong_shape) > SHOW else ""
            shown = "; ".join(f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in sorted(self.wrong_shape)[:SHOW])
            lines.append(f"  wrong shapes ({len(self.wrong_shape)}{more}): {shown}")
        return "\n".join(lines)


def compare_keys(
    model_shapes: Mapping[str, tuple[int, ...]],
    file_shapes: Mapping[str, tuple[int, ...]],
    expected: Iterable[str],
) -> Mismatch:
    """Keys of the file vs the model: unexpected (not in the model), wrong shapes, and missing (of ``expected``)."""
    mm = Mismatch()
    for k, shape in file_shapes.items():
        if k not in model_shapes:
            mm.unexpected.append(k)
        elif tuple(shape) != tuple(model_shapes[k]):
            mm.wrong_shape.append((k, tuple(shape), tuple(model_shapes[k])))
    mm.missing = [k for k in expected if k not in file_shapes]
    return mm


def is_rebuilt_buffer(key: str) -> bool:
    """Buffers our modules rebuild themselves and the published files do not provide under our names: the
    motion modules' sinusoidal position tables (``…pos_embed.pe``)."""
    return key.endswith(".pos_embed.pe")


def load_exact(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    label: str,
    expected: Callable[[str], bool] | None = None,
    device: torch.device | str | None = None,
) -> set[str]:
    """Load ``state`` into ``module`` with every key accounted for; returns the keys loaded.

    Every key of ``state`` must be a key of ``module.state_dict()`` with the same shape; every module key for
    which ``expected(key)`` is true (default: all) must be in ``state``, except the rebuilt buffers
    (:func:`is_rebuilt_buffer`). Any mismatch raises :class:`CheckpointError` with ``label`` (the file) and the
    lists. Values are cast to the module's dtype; parameters still on the meta device are materialised on
    ``device``.
    """
    targets = module.state_dict(keep_vars=True)
    expected = expected or (lambda k: True)
    mm = compare_keys(
        {k: tuple(v.shape) for k, v in targets.items()},
        {k: tuple(v.shape) for k, v in state.items()},
        [k for k in targets if expected(k) and not is_rebuilt_buffer(k)],
    )
    if mm:
        raise CheckpointError(mm.message(label))
    with torch.no_grad():
        for key, value in state.items():
            _assign(module, key, targets[key], value, device)
    return set(state)


def _assign(module: nn.Module, key: str, target: Tensor, value: Tensor, device: torch.device | str | None) -> None:
    if not target.is_meta:
        target.copy_(value)
        return
    owner_name, _, attr = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    new = value.to(device=device or "cpu", dtype=target.dtype)  # may alias the file's tensor: it is ours now
    if isinstance(target, nn.Parameter):
        owner._parameters[attr] = nn.Parameter(new, requires_grad=target.requires_grad)
    else:
        owner._buffers[attr] = new


def table_tolerance(dtype: torch.dtype) -> float:
    """How far a stored sinusoidal table may differ from ours: half a unit in the last place of the stored type
    at 1 (its rounding of values in [-1, 1]) plus 1e-5 for float32 arithmetic on arguments up to ~32 (the
    published files hold the exact sinusoid: float32 -> ~1e-5, float16 -> ~5e-4)."""
    return 0.5 * torch.finfo(dtype).eps + 1e-5


def check_tables(
    found: Mapping[str, Tensor],
    rebuilt: Mapping[str, Tensor],
    *,
    label: str,
    rebuilt_key: Callable[[str], str] | None = None,
) -> None:
    """Stored sinusoidal position tables ``[1, L, C]`` must agree with the ones the model rebuilds (first
    ``min(L)`` rows) at the precision the file stores them (:func:`table_tolerance`); they are then dropped
    (the model keeps its rebuilt float32 tables). ``rebuilt_key`` maps a key of ``found`` to its key in
    ``rebuilt`` (default: the same key)."""
    for key, table in found.items():
        ours = rebuilt[rebuilt_key(key) if rebuilt_key else key]
        length = min(table.shape[1], ours.shape[1])
        if table.ndim != 3 or table.shape[0] != 1 or table.shape[2] != ours.shape[2]:
            raise CheckpointError(
                f"{label}: position table {key} has shape {list(table.shape)}, expected [1, L, {ours.shape[2]}]"
            )
        if not table.is_floating_point():
            raise CheckpointError(f"{label}: position table {key} has dtype {table.dtype}, expected a float type")
        diff = (table[:, :length].double() - ours[:, :length].double().cpu()).abs().max().item()
        tol = table_tolerance(table.dtype)
        if not diff <= tol:
            raise CheckpointError(
                f"{label}: position table {key} ({str(table.dtype).removeprefix('torch.')}) differs from the "
                f"sinusoidal table by {diff:.3g} (tolerance {tol:.2g} at that precision): the file was trained with "
                "another temporal encoding"
            )


# ----------------------------------------------------------------------------------------------------------
# the published key layouts

_RAW_MOTION = re.compile(r"^((?:down|up)_blocks\.\d+\.motion_modules\.\d+)\.temporal_transformer\.(.*)$")
_RAW_BLOCK_PART = re.compile(r"^(transformer_blocks\.\d+)\.(attention_blocks|norms)\.(\d+)\.(.*)$")
_OUR_MOTION = re.compile(r"^((?:down|up)_blocks\.\d+\.motion_modules\.\d+)\.(.*)$")
_OUR_BLOCK_PART = re.compile(r"^(transformer_blocks\.\d+)\.(attn|norm)(\d)\.(.*)$")


def motion_key_from_official(key: str) -> str:
    """Raw AnimateDiff motion-module key (also CameraCtrl's processor keys) -> our ``UNetMotionModel`` key.

    ``attention_blocks.0/1 -> attn1/attn2``, ``norms.0/1 -> norm1/norm2``, ``ff_norm -> norm3``, drop
    ``temporal_transformer.``; ``…attention_blocks.i.pos_encoder.pe`` -> ``…pos_embed.pe`` (a table we rebuild).
    Keys already in diffusers' layout come back unchanged.
    """
    m = _RAW_MOTION.match(key)
    if not m:
        return key
    prefix, rest = m.groups()
    part = _RAW_BLOCK_PART.match(rest)
    if part:
        block, kind, index, tail = part.groups()
        if kind == "attention_blocks" and tail == "pos_encoder.pe":
            rest = f"{block}.pos_embed.pe"
        else:
            rest = f"{block}.{'attn' if kind == 'attention_blocks' else 'norm'}{int(index) + 1}.{tail}"
    else:
        rest = re.sub(r"^(transformer_blocks\.\d+)\.ff_norm\.", r"\1.norm3.", rest)
    return f"{prefix}.{rest}"


def motion_key_to_official(key: str) -> str:
    """Our motion-module key -> the raw AnimateDiff layout (inverse of :func:`motion_key_from_official`)."""
    m = _OUR_MOTION.match(key)
    if not m:
        return key
    prefix, rest = m.groups()
    part = _OUR_BLOCK_PART.match(rest)
    if part:
        block, kind, index, tail = part.groups()
        if kind == "norm" and index == "3":
            rest = f"{block}.ff_norm.{tail}"
        else:
            rest = f"{block}.{'attention_blocks' if kind == 'attn' else 'norms'}.{int(index) - 1}.{tail}"
    return f"{prefix}.temporal_transformer.{rest}"


def map_motion_state(raw: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A motion-module (or CameraCtrl processor) state in the raw layout -> (our weights, stored position tables
    by their key in the file: both attentions of a block store one, and both map to our one rebuilt
    ``…pos_embed.pe``, :func:`motion_key_from_official`)."""
    weights, tables = {}, {}
    for k, v in raw.items():
        ours = motion_key_from_official(k)
        if is_rebuilt_buffer(ours):
            tables[k] = v
        else:
            weights[ours] = v
    return weights, tables


_POSE_TABLE = re.compile(r"^(encoder_down_attention_blocks\.\d+\.\d+)\.attention_blocks\.0\.pos_encoder\.pe$")


def map_pose_encoder_state(raw: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """CameraCtrl's ``pose_encoder_state_dict`` -> (our weights, stored position tables keyed by our ``…pe``)."""
    weights, tables = {}, {}
    for k, v in raw.items():
        m = _POSE_TABLE.match(k)
        if m:
            tables[f"{m.group(1)}.pe"] = v
        else:
            weights[k] = v
    return weights, tables


def official_state_dicts(unet: nn.Module, pose_encoder: nn.Module) -> dict[str, dict[str, Tensor]]:
    """Our weights written in the layouts of the published files (tiny test files, or exporting a model of ours
    for the released code): ``cvd`` (``CVD.ckpt["unet_trainable_dict"]``), ``pose_encoder`` and
    ``attention_processor`` (``CameraCtrl.ckpt``), ``motion`` (raw ``v3_sd15_mm.ckpt`` incl. position tables),
    ``unet2d`` (diffusers ``UNet2DConditionModel`` keys). ``unet`` is the diffusers ``UNetMotionModel``."""
    cvd, processors, motion, unet2d = {}, {}, {}, {}
    for k, v in unet.state_dict().items():
        v = v.detach().cpu().clone()
        if ".epi_modules." in k:
            cvd[k] = v
        elif ".processor.qkv_merge." in k:
            processors[motion_key_to_official(k)] = v
        elif ".motion_modules." in k:
            if is_rebuilt_buffer(k):
                for i in (0, 1):
                    motion[motion_key_to_official(k.replace(".pos_embed.pe", f".attn{i + 1}.pos_encoder.pe"))] = v
            else:
                motion[motion_key_to_official(k)] = v
        else:
            unet2d[k] = v
    pose = {k: v.detach().cpu().clone() for k, v in pose_encoder.state_dict().items()}
    for name, buf in pose_encoder.named_buffers():
        if name.endswith(".pe"):
            pose[name[: -len(".pe")] + ".attention_blocks.0.pos_encoder.pe"] = buf.detach().cpu().clone()
    return {"cvd": cvd, "pose_encoder": pose, "attention_processor": processors, "motion": motion, "unet2d": unet2d}


# ----------------------------------------------------------------------------------------------------------
# AnimateDiff domain-adapter LoRA

_LORA_KEY = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


@torch.no_grad()
def fuse_animatediff_lora(unet: nn.Module, lora: Mapping[str, Tensor], scale: float, *, label: str) -> int:
    """Fuse an AnimateDiff-format LoRA (``X.processor.to_q_lora.down.weight`` / ``…up.weight`` pairs, e.g. the
    v3 domain adapter) into the weights ``X.to_q.weight`` (``to_out`` -> ``to_out.0``): ``W += scale · up @ down``.

    Every key must belong to a complete down/up pair whose target exists with a matching shape; otherwise a
    :class:`CheckpointError` lists the offending keys. Returns the number of fused layers.
    """
    targets = unet.state_dict(keep_vars=True)
    pairs: dict[str, dict[str, Tensor]] = {}
    unexpected = []
    for k, v in lora.items():
        m = _LORA_KEY.match(k)
        if not m:
            unexpected.append(k)
            continue
        base, proj, which = m.groups()
        target = f"{base}.{'to_out.0' if proj == 'to_out' else proj}.weight"
        pairs.setdefault(target, {})[which] = v
    missing = [f"{t} ({'down' if 'down' not in p else 'up'} half)" for t, p in pairs.items() if len(p) != 2]
    unexpected += [t for t in pairs if t not in targets]
    wrong = []
    for t, p in pairs.items():
        if len(p) == 2 and t in targets:
            down, up = p["down"].flatten(1), p["up"].flatten(1)  # [rank, in], [out, rank]
            w = targets[t]
            if up.shape[1] != down.shape[0] or w.shape[0] != up.shape[0] or w[0].numel() != down.shape[1]:
                wrong.append((t, (up.shape[0], down.shape[1]), tuple(w.shape)))
    mm = Mismatch(missing=missing, unexpected=unexpected, wrong_shape=wrong)
    if mm:
        raise CheckpointError(mm.message(label))
    for t, p in pairs.items():
        w = targets[t]
        delta = p["up"].flatten(1).float() @ p["down"].flatten(1).float()  # [out, in]
        w.add_((scale * delta).reshape(w.shape).to(w.dtype))
    return len(pairs)


# ----------------------------------------------------------------------------------------------------------
# single-file LDM checkpoints (DreamBooth bases)

_LDM_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text": "cond_stage_model.transformer."}
# Keys of an LDM training checkpoint that are not model weights: the DDPM schedule buffers, EMA copies, the
# text encoder's position ids (a buffer the encoder rebuilds).
_LDM_IGNORED = re.compile(
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|"
    r"log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|"
    r"posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|logvar|model_ema\..*|"
    r"cond_stage_model\.transformer\.(text_model\.)?embeddings\.position_ids)$"
)


@dataclass
class LDMComponents:
    """A single-file LDM checkpoint split into diffusers-layout state dicts."""

    unet: dict[str, Tensor]
    """``UNet2DConditionModel`` keys."""
    vae: dict[str, Tensor]
    """``AutoencoderKL`` keys."""
    text_encoder: dict[str, Tensor]
    """``CLIPTextModel`` keys (without the ``text_model.`` prefix)."""
    ignored: list[str]
    """Keys that are not model weights (schedule buffers, EMA copies, position ids)."""


_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def modern_vae_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """VAE keys of older diffusers folders (mid-block attention ``query/key/value/proj_attn``) under today's
    names (``to_q/to_k/to_v/to_out.0``); other keys unchanged."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$", k)
        out[f"{m.group(1)}.{_LEGACY_VAE_ATTENTION[m.group(2)]}.{m.group(3)}" if m else k] = v
    return out


def strip_text_model_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CLIP text-encoder keys as transformers 5 names them (older files prefix every key with ``text_model.``);
    the rebuilt ``position_ids`` buffer is dropped."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("text_model.")
        if k == "embeddings.position_ids":
            continue
        out[k] = v
    return out


def convert_ldm_checkpoint(
    state: Mapping[str, Tensor], unet_config: Mapping, vae_config: Mapping, *, label: str
) -> LDMComponents:
    """Split a single-file LDM checkpoint into diffusers UNet / VAE / CLIP text-encoder state dicts with
    diffusers' offline single-file converters, and account for every source key: a key under the UNet, VAE or
    text-encoder prefix that no converted key uses, or a key under no known prefix, raises
    :class:`CheckpointError`."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    state = dict(state)
    unet = convert_ldm_unet_checkpoint(state, dict(unet_config))
    vae = convert_ldm_vae_checkpoint(state, dict(vae_config))
    text = strip_text_model_prefix(convert_ldm_clip_checkpoint(state))
    # The converters copy tensors by reference (the VAE attention weights as views): a source tensor is used
    # iff its storage start appears among the converted tensors.
    used = {t.data_ptr() for d in (unet, vae, text) for t in d.values() if t.numel()}
    ignored, unconsumed = [], []
    for k, v in state.items():
        if _LDM_IGNORED.match(k):
            ignored.append(k)
        elif any(k.startswith(p) for p in _LDM_PREFIXES.values()):
            if v.numel() and v.data_ptr() not in used:
                unconsumed.append(k)
        else:
            unconsumed.append(k)
    if unconsumed:
        raise CheckpointError(Mismatch(unexpected=unconsumed).message(f"{label} (single-file LDM checkpoint)"))
    if ignored:
        log.info("%s: %d keys are not model weights and were skipped (e.g. %s)", label, len(ignored), ignored[:3])
    return LDMComponents(unet=unet, vae=vae, text_encoder=text, ignored=ignored)
