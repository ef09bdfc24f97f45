"""The one ``device`` rule (:mod:`cvd.devices`): auto, cpu, cuda and cuda:N, with the config key in errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvd.devices import check_device, resolve_device

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_every_spelling_of_the_rule_passes_the_check(device):
    assert check_device(device, "fit.device") == device


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:a", "cuda0", "mps", " cpu", "", None, 0])
def test_other_spellings_are_refused_naming_the_key(device):
    with pytest.raises(ValueError, match=r"^export\.device must be auto, cpu, cuda or cuda:N, got "):
        check_device(device, "export.device")
    with pytest.raises(ValueError, match=r"^fit\.device must be"):
        resolve_device(device, "fit.device")


def test_cpu_is_the_cpu():
    assert resolve_device("cpu", "fit.device") == "cpu"


def test_auto_is_cuda_when_torch_sees_it_else_the_cpu():
    assert resolve_device("auto", "fit.device") == ("cpu" if NO_CUDA else "cuda")


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_names_the_key_and_what_to_set(device):
    with pytest.raises(ValueError) as e:
        resolve_device(device, "generate.device")
    assert str(e.value) == (
        f"generate.device={device} but torch sees no CUDA device; set generate.device=cpu or generate.device=auto"
    )


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_cuda_devices_that_exist_resolve_and_one_beyond_them_is_named():
    count = torch.cuda.device_count()
    assert resolve_device("cuda", "fit.device") == "cuda"
    assert resolve_device(f"cuda:{count - 1}", "fit.device") == f"cuda:{count - 1}"
    with pytest.raises(ValueError, match=rf"fit\.device=cuda:{count} but torch sees {count} CUDA device"):
        resolve_device(f"cuda:{count}", "fit.device")


def test_a_fit_on_cuda_without_cuda_is_refused_naming_fit_device(tmp_path):
    """The fit's trainer config resolves the device with the same rule (ns-train's device type comes from it)."""
    from cvd_scene.fit.config import FitConfig
    from cvd_scene.fit.train import trainer_config

    config = trainer_config(Path("run"), tmp_path, FitConfig(device="auto"))
    assert config.machine.device_type == ("cpu" if NO_CUDA else "cuda")
    if NO_CUDA:
        with pytest.raises(ValueError, match=r"^fit\.device=cuda:1 but torch sees no CUDA device"):
            trainer_config(Path("run"), tmp_path, FitConfig(device="cuda:1"))


def test_generate_and_the_trainer_follow_the_same_rule():
    """One rule everywhere a config names a device: the generate stage's and the trainer's configs refuse what the
    fit's refuses, and accept ``cuda:N``."""
    from cvd.training.config import TrainConfig
    from cvd_scene.generate.config import GenerateConfig

    for make in (lambda d: GenerateConfig(device=d), lambda d: TrainConfig(device=d)):
        assert make("cuda:1").device == "cuda:1"
        with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
            make("gpu")
