"""nerfstudio trainer configs of the methods ``cvd-scene`` (Gaussian splatting) and ``cvd-scene-nerf`` (NeRF).

The plugin entry points (``plugins/cvd_scene_plugins``) wrap these in ``MethodSpecification``s; the ``fit`` stage
starts from the same functions, so ``ns-train cvd-scene`` and ``cvd-scene fit`` train the same method.
``reduced=True`` gives the tiny configurations the tests train for a few steps on the CPU.

Schedules: every setting counted in training steps (the splat model's densification, resolution and SH schedule,
the optimizers' learning-rate schedules) is written for a fit of :data:`SPLAT_ITERATIONS` (or
:data:`NERF_ITERATIONS`) iterations and scaled to the fit's own count by :func:`scaled_schedule`, which
:class:`CvdTrainerConfig` applies whenever it is built: ``cvd-scene fit fit.iterations=N`` builds it through
:func:`splat_config`, ``ns-train cvd-scene --max-num-iterations N`` through tyro, and both train with the same
settings.

Imports nerfstudio (the fit subpackage is the only place that may).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

from cvd_scene.fit.dataparser import CvdSceneDataParserConfig
from cvd_scene.fit.nerf_model import CvdNerfModelConfig
from cvd_scene.fit.nsdata import CvdDatamanagerConfig
from cvd_scene.fit.splat_model import CvdSplatModelConfig

SPLAT_ITERATIONS = 3000
"""Iterations of a default ``cvd-scene`` fit: the count its step-counted settings are written for."""
NERF_ITERATIONS = 5000
"""Iterations of a default ``cvd-scene-nerf`` fit: the count its step-counted settings are written for."""
SCHEDULER_STEP_FIELDS = {"max_steps": 1, "warmup_steps": 0}
"""Fields of a learning-rate scheduler config counted in steps, and the least value each may be scaled to."""


def _scaled(steps: int, iterations: int, schedule_iterations: int, least: int) -> int:
    """``steps`` of a ``schedule_iterations``-step fit as steps of an ``iterations``-step one (exact, rounded down)."""
    return max(least, steps * iterations // schedule_iterations)


def scaled_schedule(model, optimizers: dict, schedule_iterations: int, iterations: int) -> tuple:
    """The model config and optimizer configs with every step-counted setting scaled from a fit of
    ``schedule_iterations`` iterations to one of ``iterations``: returns new ``(model, optimizers)``, the inputs
    untouched.

    Scaled: the model config's ``SCHEDULE_FIELDS`` (e.g. :attr:`CvdSplatModelConfig.SCHEDULE_FIELDS`; none for
    nerfacto, whose schedule stays nerfacto's) and every scheduler's ``max_steps`` and ``warmup_steps``.
    """
    if schedule_iterations < 1:
        raise ValueError(f"schedule_iterations must be >= 1, got {schedule_iterations}")
    n = max(iterations, 1)
    fields = getattr(model, "SCHEDULE_FIELDS", {})
    model = replace(
        model, **{k: _scaled(getattr(model, k), n, schedule_iterations, least) for k, least in fields.items()}
    )
    scaled = {}
    for name, entry in optimizers.items():
        scheduler = entry.get("scheduler")
        if scheduler is not None:
            steps = {
                k: _scaled(getattr(scheduler, k), n, schedule_iterations, least)
                for k, least in SCHEDULER_STEP_FIELDS.items()
                if hasattr(scheduler, k)
            }
            scheduler = replace(scheduler, **steps)
        scaled[name] = {**entry, "scheduler": scheduler}
    return model, scaled


@dataclass
class CvdTrainerConfig(TrainerConfig):
    """nerfstudio's trainer config whose step-counted model and optimizer settings follow ``max_num_iterations``.

    Built with ``max_num_iterations`` other than ``schedule_iterations`` (as ``ns-train cvd-scene
    --max-num-iterations N`` builds it), it scales them with :func:`scaled_schedule` and records the new count.
    """

    schedule_iterations: int = SPLAT_ITERATIONS
    """Iterations the model's and optimizers' step-counted settings are written for; they are scaled from it to
    ``max_num_iterations`` (set both to the same count to give those settings in steps of your own fit)."""

    def __post_init__(self) -> None:
        if self.max_num_iterations != self.schedule_iterations:
            model, self.optimizers = scaled_schedule(
                self.pipeline.model, self.optimizers, self.schedule_iterations, self.max_num_iterations
            )
            self.pipeline = replace(self.pipeline, model=model)
            self.schedule_iterations = self.max_num_iterations


class FloatExponentialDecayScheduler(ExponentialDecayScheduler):
    """nerfstudio's exponential decay with learning rates kept as Python floats.

    nerfstudio's schedule returns numpy floats, which end up in the checkpoints; torch >= 2.6 loads checkpoints
    with ``weights_only=True`` and refuses numpy scalars, so ``ns-viewer``/``ns-render`` could not load them.
    """

    def get_scheduler(self, optimizer, lr_init):
        scheduler = super().get_scheduler(optimizer, lr_init)
        numpy_lambdas = list(scheduler.lr_lambdas)
        scheduler.lr_lambdas = [lambda step, f=f: float(f(step)) for f in numpy_lambdas]
        for group in optimizer.param_groups:  # LambdaLR applied the first value at construction
            group["lr"] = float(group["lr"])
        scheduler._last_lr = [float(lr) for lr in scheduler._last_lr]
        return scheduler


@dataclass
class FloatExponentialDecaySchedulerConfig(ExponentialDecaySchedulerConfig):
    """:class:`ExponentialDecaySchedulerConfig` whose learning rates are Python floats (loadable checkpoints)."""

    _target: type = field(default_factory=lambda: FloatExponentialDecayScheduler)


SPLAT_DESCRIPTION = "cvd-scene: Gaussian splatting for generated multi-view videos (runs on CPU and CUDA)"
NERF_DESCRIPTION = "cvd-scene-nerf: nerfacto for cvd-scene run folders (runs on CPU and CUDA, no downloads)"


def splat_optimizers(max_steps: int) -> dict:
    """One optimizer per parameter group of :class:`CvdSplatModel` (nerfstudio needs every group listed)."""
    return {
        "means": {
            "optimizer": AdamOptimizerConfig(lr=1.6e-4, eps=1e-15),
            "scheduler": FloatExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps),
        },
        "features_dc": {"optimizer": AdamOptimizerConfig(lr=0.0025, eps=1e-15), "scheduler": None},
        "features_rest": {"optimizer": AdamOptimizerConfig(lr=0.0025 / 20, eps=1e-15), "scheduler": None},
        "opacities": {"optimizer": AdamOptimizerConfig(lr=0.05, eps=1e-15), "scheduler": None},
        "scales": {"optimizer": AdamOptimizerConfig(lr=0.005, eps=1e-15), "scheduler": None},
        "quats": {"optimizer": AdamOptimizerConfig(lr=0.001, eps=1e-15), "scheduler": None},
        "appearance": {"optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-15), "scheduler": None},
        "camera_opt": {
            "optimizer": AdamOptimizerConfig(lr=1e-4, eps=1e-15),
            "scheduler": FloatExponentialDecaySchedulerConfig(
                lr_final=5e-7, max_steps=max_steps, warmup_steps=min(1000, max_steps // 3), lr_pre_warmup=0
            ),
        },
    }


def splat_config(max_steps: int = SPLAT_ITERATIONS, eval_every_k: int = 6, reduced: bool = False) -> CvdTrainerConfig:
    """Trainer config of ``cvd-scene`` for ``max_steps`` iterations (schedules scaled to them); ``reduced``: 2 steps,
    tiny refinement schedule, for tests."""
    model = CvdSplatModelConfig()
    schedule_iterations = SPLAT_ITERATIONS
    if reduced:
        max_steps = schedule_iterations = 2
        model = CvdSplatModelConfig(warmup_length=0, refine_every=1, stop_split_at=2, num_downscales=0)
    return CvdTrainerConfig(
        method_name="cvd-scene",
        steps_per_eval_image=max(100, max_steps // 6),
        steps_per_eval_batch=0,
        steps_per_save=1000,
        steps_per_eval_all_images=1_000_000,
        max_num_iterations=max_steps,
        schedule_iterations=schedule_iterations,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=CvdDatamanagerConfig(
                dataparser=CvdSceneDataParserConfig(eval_every_k=eval_every_k),
                cache_images_type="uint8",
            ),
            model=model,
        ),
        optimizers=splat_optimizers(schedule_iterations),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


def nerf_optimizers(max_steps: int) -> dict:
    """One optimizer per parameter group of nerfacto."""
    return {
        "proposal_networks": {
            "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
            "scheduler": FloatExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=max(max_steps, 1)),
        },
        "fields": {
            "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
            "scheduler": FloatExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=max(max_steps, 1)),
        },
        "camera_opt": {
            "optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-15),
            "scheduler": FloatExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=5000),
        },
    }


def nerf_config(max_steps: int = NERF_ITERATIONS, eval_every_k: int = 6, reduced: bool = False) -> CvdTrainerConfig:
    """Trainer config of ``cvd-scene-nerf`` (nerfacto) for ``max_steps`` iterations (learning-rate schedules scaled
    to them); ``reduced``: 2 steps of 256 rays, small fields."""
    rays = 4096
    schedule_iterations = NERF_ITERATIONS
    model = CvdNerfModelConfig(
        eval_num_rays_per_chunk=1 << 13,
        average_init_density=0.01,
        near_plane=0.02,
        far_plane=100.0,
        camera_optimizer=CameraOptimizerConfig(mode="off"),
    )
    if reduced:
        max_steps = schedule_iterations = 2
        rays = 256
        model = CvdNerfModelConfig(
            eval_num_rays_per_chunk=1 << 12,
            near_plane=0.02,
            far_plane=100.0,
            camera_optimizer=CameraOptimizerConfig(mode="off"),
            num_levels=4,
            log2_hashmap_size=12,
            hidden_dim=16,
            hidden_dim_color=16,
            num_proposal_samples_per_ray=(32, 16),
            num_nerf_samples_per_ray=16,
            proposal_net_args_list=[
                {"hidden_dim": 8, "log2_hashmap_size": 12, "num_levels": 4, "max_res": 64, "use_linear": False},
                {"hidden_dim": 8, "log2_hashmap_size": 12, "num_levels": 4, "max_res": 128, "use_linear": False},
            ],
        )
    return CvdTrainerConfig(
        method_name="cvd-scene-nerf",
        steps_per_eval_batch=500,
        steps_per_eval_image=max(500, max_steps // 4),
        steps_per_save=2000,
        steps_per_eval_all_images=1_000_000,
        max_num_iterations=max_steps,
        schedule_iterations=schedule_iterations,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=CvdSceneDataParserConfig(eval_every_k=eval_every_k),
                train_num_rays_per_batch=rays,
                eval_num_rays_per_batch=rays,
            ),
            model=model,
        ),
        optimizers=nerf_optimizers(schedule_iterations),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 13),
        vis="viewer",
    )
