"""Running a training from a train config: resolve the preset and the model config, check that every local file
it needs exists (naming each missing one), build the data sources, train.

Pure Python, PyYAML and ``cvd`` (torch) -- no command-line or rendering libraries, so a GPU machine without open3d
(or tyro/rich) can train from a clip cache. Sources of kind ``render`` import the reference renderer when built.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cvd_scene.config import ConfigError, configs_dir, load_config, parse_overrides, preset_path

log = logging.getLogger(__name__)


def resolve_path(path: str | Path) -> Path:
    """A data or weights path: as given (absolute, or relative to the current folder) when it exists, else
    relative to the repository root (where the presets' paths point)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    alt = configs_dir().parent / p
    return alt if alt.exists() else p


def load_train_config(config: str, overrides: tuple[str, ...] | dict = ()):
    """The train config of a preset name or YAML path, with overrides (strict)."""
    from cvd.training.config import TrainConfig

    ov = parse_overrides(list(overrides)) if isinstance(overrides, tuple) else overrides
    return load_config(TrainConfig, "train", config, ov)


def model_config_for(train_config):
    """The model config the run starts from: ``configs/model/<model.config>.yaml`` with ``model.changes``; for
    ``model.init=pretrained`` the saved model's own config (its architecture and trained vocabulary) with them."""
    import yaml

    from cvd.model import saved_config
    from cvd.model_config import CVDModelConfig, config_from_dict, config_to_dict
    from cvd_scene.config import merge

    m = train_config.model
    if m.init == "pretrained" and m.weights and (resolve_path(m.weights) / "cvd_model.json").is_file():
        path = resolve_path(m.weights) / "cvd_model.json"
        data = config_to_dict(saved_config(resolve_path(m.weights)))
    else:
        path = preset_path("model", m.config)
        data = yaml.safe_load(path.read_text()) or {}
    try:
        return config_from_dict(CVDModelConfig, merge(data, train_config.model.changes))
    except ValueError as e:
        raise ConfigError(f"model config {path} with model.changes: {e}") from None


def missing_inputs(cfg) -> list[str]:
    """Every local file or folder the config needs that is not there, as ``key=path (what it is)``."""
    out = []
    m = cfg.model
    if m.init == "official" and m.official is not None:
        o = m.official
        for key, value, what, folder in (
            ("sd15", o.sd15, "Stable Diffusion 1.5 diffusers folder", True),
            ("motion", o.motion, "AnimateDiff v3_sd15_mm.ckpt", False),
            ("cameractrl", o.cameractrl, "CameraCtrl.ckpt", False),
            ("cvd", o.cvd, "CVD.ckpt", False),
            ("adapter", o.adapter, "v3_sd15_adapter.ckpt", False),
            ("base", o.base, "single-file base checkpoint", False),
        ):
            if value is None:
                continue
            p = resolve_path(value)
            if not (p.is_dir() if folder else p.is_file()):
                out.append(f"model.official.{key}={value} ({what})")
    if m.init == "pretrained" and m.weights and not (resolve_path(m.weights) / "cvd_model.json").is_file():
        out.append(f"model.weights={m.weights} (a model folder of our saved format)")
    if m.autoencoder and not (resolve_path(m.autoencoder) / "config.json").is_file():
        out.append(f"model.autoencoder={m.autoencoder} (a diffusers AutoencoderKL folder)")
    for side in ("posed", "homography"):
        for i, s in enumerate(getattr(cfg.data, side)):
            if s.kind == "render":
                continue
            p = resolve_path(s.path)
            ok = p.is_file() if s.kind == "cache" else p.is_dir()
            if not ok:
                what = {"cache": "a clip cache file (cvd-scene prerender)", "re10k": "a RealEstate10K-style folder",
                        "videos": "a folder of monocular videos"}[s.kind]
                out.append(f"data.{side}[{i}].path={s.path} ({what})")
    if cfg.data.held_out and not resolve_path(cfg.data.held_out).is_file():
        out.append(f"data.held_out={cfg.data.held_out} (a clip cache file)")
    return out


def build_data(cfg):
    """The training pairs of ``cfg.data`` (:class:`cvd.training.datasets.MixedPairs`) and the held-out cache."""
    from cvd.training.cache import ClipCache
    from cvd.training.datasets import (
        CachedPairs,
        CachedVideos,
        HomographyPairs,
        MixedPairs,
        MonocularVideos,
        Re10kPairs,
    )

    d = cfg.data
    size = (d.num_frames, d.height_px, d.width_px)
    caches: dict[Path, ClipCache] = {}

    def cache(path: str) -> ClipCache:
        p = resolve_path(path)
        if p not in caches:
            caches[p] = ClipCache(p)
        return caches[p]

    posed, homography = [], []
    for s in d.posed:
        if s.kind == "cache":
            src = CachedPairs(cache(s.path), *size)
        elif s.kind == "re10k":
            src = Re10kPairs(resolve_path(s.path), *size, frame_stride=s.frame_stride,
                             units_per_pose_unit=s.units_per_pose_unit)
        elif s.kind == "render":
            from cvd_scene.train.data import RenderedPairs

            src = RenderedPairs(*size, samples_per_pixel=s.render_samples_per_pixel, seed=s.render_seed)
        else:
            raise ConfigError(f"data.posed: a source of kind {s.kind!r} has no cameras; use it under data.homography")
        posed.append((src, s.weight))
    for s in d.homography:
        if s.kind == "cache":
            videos = CachedVideos(cache(s.path), *size)
        elif s.kind == "videos":
            videos = MonocularVideos(resolve_path(s.path), *size, frame_stride=s.frame_stride)
        elif s.kind == "render":
            from cvd_scene.train.data import RenderedVideos

            videos = RenderedVideos(*size, samples_per_pixel=s.render_samples_per_pixel, seed=s.render_seed)
        else:
            raise ConfigError(f"data.homography: kind {s.kind!r} is for posed pairs; use cache, videos or render")
        homography.append((HomographyPairs(videos, d.warp), s.weight))
    data = MixedPairs(posed, homography, d.posed_fraction)
    held_out = cache(d.held_out) if d.held_out else None
    return data, held_out


def run_training(cfg):
    """Check the inputs, build data and model config, train. Returns :class:`cvd.training.trainer.TrainResult`."""
    missing = missing_inputs(cfg)
    if missing:
        raise FileNotFoundError(
            "training needs local files that are not there (nothing is downloaded):\n  " + "\n  ".join(missing)
            + "\nput them there or point the config at them with KEY=VALUE overrides"
        )
    from cvd.model import OfficialFiles
    from cvd.training.trainer import Trainer

    mcfg = model_config_for(cfg)
    official = None
    if cfg.model.init == "official":
        o = cfg.model.official
        official = OfficialFiles(
            sd15=resolve_path(o.sd15), motion=resolve_path(o.motion), cameractrl=resolve_path(o.cameractrl),
            cvd=resolve_path(o.cvd) if o.cvd else None, adapter=resolve_path(o.adapter) if o.adapter else None,
            base=resolve_path(o.base) if o.base else None,
        )
    if cfg.model.autoencoder:
        cfg.model.autoencoder = str(resolve_path(cfg.model.autoencoder))
    if cfg.model.weights:
        cfg.model.weights = str(resolve_path(cfg.model.weights))
    data, held_out = build_data(cfg)
    return Trainer(cfg, mcfg, data, held_out=held_out, official=official).run()
