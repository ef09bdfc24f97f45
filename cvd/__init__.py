"""cvd: Collaborative Video Diffusion on diffusers, usable without the rest of cvd-scene.

Geometry for the model (Plücker rays, fundamental matrices, epipolar attention bias), the CameraCtrl pose encoder
and pose injection, the Cross-View Synchronization Module, UNet assembly, checkpoint loading, pair scheduling,
the N-video pipeline and the trainer. May import torch, diffusers, transformers, accelerate and numpy; must never
import ``cvd_scene``.
"""

__version__ = "0.1.0"
