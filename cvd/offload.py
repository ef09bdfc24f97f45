"""Keeping model weights off the accelerator until they are used: the two CPU-offload policies of
:class:`cvd.pipeline.CVDPipeline` (the ideas of diffusers' ``enable_model_cpu_offload`` /
``enable_sequential_cpu_offload``, written here on plain PyTorch module hooks).

* :class:`ModelOffload` — whole models take turns: a forward pre-hook on each model (text encoder, pose encoder,
  UNet; the VAE is moved explicitly by the pipeline, since ``decode``/``encode`` are not ``forward``) moves it
  to the execution device and the model used before it back to the offload device. At most one model's
  weights are on the device at a time; the UNet stays there for the whole denoising loop (one move per call
  of the pipeline, not per step).
* :class:`SequentialOffload` — every module that owns parameters or buffers directly moves just those tensors
  to the device in a forward pre-hook and back in a forward hook: at most one layer's weights are on the device
  at a time, at the price of copying every weight at every UNet call.

Both change where tensors live, never what is computed. All moves go through :func:`place`, the one function
that moves a module's tensors (tests record it). Imports torch only; must never import ``cvd_scene``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["ModelOffload", "SequentialOffload", "place"]


def place(module: nn.Module, device: torch.device, *, recurse: bool) -> None:
    """Move ``module``'s parameters and buffers (its own only, unless ``recurse``) to ``device`` in place: the
    Parameter objects stay the same (optimisers and shared references keep working)."""
    modules = module.modules() if recurse else (module,)
    for m in modules:
        for p in m._parameters.values():
            if p is not None and p.device != device:
                p.data = p.data.to(device)
        for name, b in m._buffers.items():
            if b is not None and b.device != device:
                m._buffers[name] = b.to(device)


class ModelOffload:
    """One model on the execution device at a time (see the module docstring).

    Args:
        models: name -> model, every model the pipeline runs; all start on ``offload_device``.
        device: the execution device.
        offload_device: where models wait (the CPU).
        hooked: names of the models whose ``forward`` triggers the move (the others are moved with
            :meth:`use`).
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        device: torch.device | str,
        offload_device: torch.device | str = "cpu",
        hooked: tuple[str, ...] | None = None,
    ) -> None:
        self.models = dict(models)
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.current: str | None = None
        self.moves: int = 0
        """Models moved onto the device so far."""
        for m in self.models.values():
            place(m, self.offload_device, recurse=True)
        self._handles = [
            self.models[name].register_forward_pre_hook(self._hook(name))
            for name in (hooked if hooked is not None else tuple(self.models))
        ]

    def _hook(self, name: str):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            self.use(name)

        return pre_hook

    def use(self, name: str) -> None:
        """Put model ``name`` on the execution device and the one used before it back on the offload device."""
        if self.current == name:
            return
        if self.current is not None:
            place(self.models[self.current], self.offload_device, recurse=True)
        place(self.models[name], self.device, recurse=True)
        self.current = name
        self.moves += 1

    def offload_all(self) -> None:
        """Every model back on the offload device (at the end of a pipeline call)."""
        if self.current is not None:
            place(self.models[self.current], self.offload_device, recurse=True)
            self.current = None

    def remove(self) -> None:
        """Remove the hooks (the models stay where they are)."""
        for h in self._handles:
            h.remove()
        self._handles = []


class SequentialOffload:
    """Every module that owns tensors brings them to the execution device for its own forward only.

    A module whose parent reads its parameters without calling it (none in the CVD models) would see them on the
    offload device; ``use`` moves a whole model for such call sites (the VAE's ``decode``/``encode`` run their
    submodules' forwards, so they need nothing).
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        device: torch.device | str,
        offload_device: torch.device | str = "cpu",
    ) -> None:
        self.models = dict(models)
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self._handles = []
        for model in self.models.values():
            place(model, self.offload_device, recurse=True)
            for m in model.modules():
                if any(t is not None for t in (*m._parameters.values(), *m._buffers.values())):
                    self._handles.append(m.register_forward_pre_hook(self._pre))
                    self._handles.append(m.register_forward_hook(self._post))

    def _pre(self, module: nn.Module, args: tuple) -> None:
        place(module, self.device, recurse=False)

    def _post(self, module: nn.Module, args: tuple, output) -> None:
        place(module, self.offload_device, recurse=False)

    def use(self, name: str) -> None:
        """Nothing to do: each layer moves itself when it runs."""

    def offload_all(self) -> None:
        for model in self.models.values():
            place(model, self.offload_device, recurse=True)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
