"""Loading the published CVD / CameraCtrl / AnimateDiff / SD1.5 files with every key accounted for, our saved
format, and ``cvd-scene convert`` — on the real key layouts (``tests/data/official_layout``, meta device) and on
tiny files written in those layouts."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cvd.checkpoints import (
    CheckpointError,
    check_tables,
    compare_keys,
    fuse_animatediff_lora,
    is_rebuilt_buffer,
    map_motion_state,
    map_pose_encoder_state,
    modern_vae_names,
    motion_key_from_official,
    motion_key_to_official,
    read_state_file,
)
from cvd.dataconfig import ConfigError
from cvd.geometry import EpipolarBiasConfig
from cvd.model import CVDModel, _build_empty
from cvd.model_config import load_model_config
from tests.cvd_testing import (
    CONFIGS,
    camera_inputs,
    random_model,
    tiny_config,
    to_ldm,
    unet_inputs,
    write_official_files,
)

torch.set_num_threads(1)
NUM_FRAMES = 2
SIZE = 64


def _layout(data_dir: Path, name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v[0]) for k, v in json.loads((data_dir / "official_layout" / f"{name}.json").read_text()).items()}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------- the real layouts


@pytest.fixture(scope="module")
def sd15_parts() -> dict:
    """The sd15 components on the meta device (buffers real)."""
    return _build_empty(load_model_config(CONFIGS / "sd15.yaml"), torch.float32)


def test_sd15_on_meta_device_matches_every_published_key(data_dir, sd15_parts):
    """Every key of every published file maps onto a parameter of the same shape of the sd15 model: zero missing,
    zero unexpected; the stored position tables match our rebuilt buffers' shapes."""
    cfg = load_model_config(CONFIGS / "sd15.yaml")
    parts = sd15_parts
    unet, pose = parts["unet"].unet, parts["pose_encoder"]
    assert all(p.is_meta for p in unet.parameters())
    ours = _shapes(unet)
    files = {
        "animatediff_v3_mm": (ours, lambda k: ".motion_modules." in k and ".processor." not in k, map_motion_state),
        "cameractrl_attention_processor": (ours, lambda k: ".processor.qkv_merge." in k, map_motion_state),
        "cvd_unet_trainable": (ours, lambda k: ".epi_modules." in k, lambda d: (d, {})),
        "cameractrl_pose_encoder": (_shapes(pose), lambda k: True, map_pose_encoder_state),
    }
    buffers = {**{k: tuple(v.shape) for k, v in unet.named_buffers()}, **{k: tuple(v.shape) for k, v in pose.named_buffers()}}
    for name, (model_shapes, responsible, mapping) in files.items():
        layout = _layout(data_dir, name)
        weights, tables = mapping(layout)
        expected = [k for k in model_shapes if responsible(k) and not is_rebuilt_buffer(k)]
        mismatch = compare_keys(model_shapes, weights, expected)
        assert not mismatch, mismatch.message(name)
        assert all(buffers[motion_key_from_official(k)][2] == shape[2] for k, shape in tables.items()), name
    # the documented counts: 520 CVD keys over 20 CVSMs (417,137,600 parameters), 40 merges, 560 raw motion keys
    cvsm_params = sum(p.numel() for k, p in unet.named_parameters() if ".epi_modules." in k)
    assert cvsm_params == 417_137_600 and len(list(parts["unet"].cvsms())) == 20
    assert len(_layout(data_dir, "animatediff_v3_mm")) == 560
    # the SD1.5 UNet config of the layouts is ours
    sd15 = json.loads((data_dir / "official_layout" / "sd15_unet_config.json").read_text())
    for k, v in cfg.unet.diffusers_kwargs().items():
        if k in sd15:
            assert (tuple(sd15[k]) if isinstance(sd15[k], list) else sd15[k]) == v, k


def test_motion_key_mapping_round_trips(data_dir):
    for k in _layout(data_dir, "animatediff_v3_mm"):
        ours = motion_key_from_official(k)
        assert "temporal_transformer" not in ours and "attention_blocks" not in ours
        if not is_rebuilt_buffer(ours):
            assert motion_key_to_official(ours) == k
    assert motion_key_from_official(
        "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.ff_norm.weight"
    ) == "up_blocks.3.motion_modules.2.transformer_blocks.0.norm3.weight"


# ---------------------------------------------------------------------------------------------- tiny files


@pytest.fixture(scope="module")
def source() -> CVDModel:
    """The model whose weights the tiny 'published' files carry."""
    return random_model(seed=3)


@pytest.fixture(scope="module")
def files(source, tmp_path_factory):
    return write_official_files(source, tmp_path_factory.mktemp("official"))


def _predict(model: CVDModel) -> torch.Tensor:
    K, c2w = camera_inputs(2, NUM_FRAMES, SIZE)
    grids = model.unet.level_grids((SIZE // 8, SIZE // 8))
    from cvd.context import epipolar_biases, guided_rows

    bias = epipolar_biases(K, c2w, [1, 0], image_hw=(SIZE, SIZE), grids=grids, generator=torch.Generator().manual_seed(0))
    rv, rb = guided_rows(2)
    ctx = model.unet.make_context(row_video=rv, row_branch=rb, partner_video=[1, 0], num_frames=NUM_FRAMES,
                                  bias=bias, pose_features=model.encode_cameras(K.float(), c2w.float(), SIZE, SIZE))
    sample, t, _ = unet_inputs(model, 4, NUM_FRAMES, SIZE)
    text = model.encode_text(["", "a room", "", "a room"])
    with torch.no_grad():
        return model.unet(sample, t, text, ctx)


def _same_weights(a: CVDModel, b: CVDModel) -> None:
    for name, ma in a._weight_modules().items():
        sa, sb = ma.state_dict(), b._weight_modules()[name].state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k}"


def test_published_layout_files_load_and_change_the_outputs(source, files):
    fresh = CVDModel.from_config(tiny_config(), seed=0)
    loaded = CVDModel.from_official(tiny_config(), files)
    _same_weights(loaded, source)
    out = _predict(loaded)
    assert torch.equal(out, _predict(source))
    assert (out - _predict(fresh)).abs().max() > 1e-3


def _rewrite(path: Path, edit) -> Path:
    obj = torch.load(path, weights_only=True)
    edit(obj)
    out = path.with_name("edited_" + path.name)
    torch.save(obj, out)
    return out


def test_missing_key_wrong_shape_and_unexpected_key_name_the_file_and_key(files):
    cfg = tiny_config()
    victim = "down_blocks.0.epi_modules.0.epi_transformer.proj_in.weight"

    def drop(obj):
        del obj["unet_trainable_dict"][victim]

    bad = _rewrite(files.cvd, drop)
    with pytest.raises(CheckpointError) as e:
        CVDModel.from_official(cfg, dataclasses.replace(files, cvd=bad))
    assert str(bad) in str(e.value) and "missing keys (1)" in str(e.value) and victim in str(e.value)

    def reshape(obj):
        sd = obj["pose_encoder_state_dict"]
        sd["encoder_conv_in.weight"] = sd["encoder_conv_in.weight"][:16]

    bad = _rewrite(files.cameractrl, reshape)
    with pytest.raises(CheckpointError) as e:
        CVDModel.from_official(cfg, dataclasses.replace(files, cameractrl=bad))
    msg = str(e.value)
    assert "pose_encoder_state_dict" in msg and "wrong shapes (1)" in msg and "encoder_conv_in.weight" in msg
    assert "[16, 384, 3, 3]" in msg and "[32, 384, 3, 3]" in msg

    def extra(obj):  # a mid-block motion module: a v2 file, not v3
        for i in range(25):
            obj[f"mid_block.motion_modules.0.temporal_transformer.extra{i}.weight"] = torch.zeros(2)

    bad = _rewrite(files.motion, extra)
    with pytest.raises(CheckpointError) as e:
        CVDModel.from_official(cfg, dataclasses.replace(files, motion=bad))
    assert "unexpected keys (25, first 20)" in str(e.value) and "mid_block.motion_modules.0" in str(e.value)


def test_missing_files_say_which_and_where(files, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--cvd: the file .*nope\.ckpt does not exist"):
        CVDModel.from_official(tiny_config(), dataclasses.replace(files, cvd=tmp_path / "nope.ckpt"))
    empty = tmp_path / "sd15"
    (empty / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no unet weights; looked for .*diffusion_pytorch_model\.safetensors"):
        CVDModel.from_official(tiny_config(), dataclasses.replace(files, sd15=empty))


class NotATensor:
    """An arbitrary pickled object: what ``weights_only=True`` refuses to unpickle."""


def test_state_files_are_read_with_weights_only(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"x": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_file(path, label="evil")
    trusted = read_state_file(path, trust_pickle=True)  # explicit opt-in; non-tensor entries are skipped
    assert trusted == {}
    save_file({"a": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_state_file(tmp_path / "w.safetensors")["a"], torch.ones(2))
    torch.save({"state_dict": {"a": torch.ones(3)}}, tmp_path / "lightning.ckpt")
    assert read_state_file(tmp_path / "lightning.ckpt", unwrap="state_dict")["a"].shape == (3,)
    with pytest.raises(CheckpointError, match="no 'unet_trainable_dict' entry"):
        read_state_file(tmp_path / "lightning.ckpt", inner="unet_trainable_dict")


def test_domain_adapter_lora_is_fused_at_its_scale(source, files, tmp_path):
    target = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    g = torch.Generator().manual_seed(0)
    lora = {}
    for proj, out in (("to_q", 32), ("to_out", 32)):
        lora[f"{target}.processor.{proj}_lora.down.weight"] = torch.randn(4, 32, generator=g)
        lora[f"{target}.processor.{proj}_lora.up.weight"] = torch.randn(out, 4, generator=g)
    path = tmp_path / "adapter.ckpt"
    torch.save({"state_dict": lora}, path)
    model = CVDModel.from_official(tiny_config(), dataclasses.replace(files, adapter=path, adapter_scale=0.5))
    got = model.unet.unet.state_dict()
    want = source.unet.unet.state_dict()
    for proj, name in (("to_q", "to_q"), ("to_out", "to_out.0")):
        delta = lora[f"{target}.processor.{proj}_lora.up.weight"] @ lora[f"{target}.processor.{proj}_lora.down.weight"]
        torch.testing.assert_close(got[f"{target}.{name}.weight"], want[f"{target}.{name}.weight"] + 0.5 * delta)
    assert torch.equal(got[f"{target}.to_k.weight"], want[f"{target}.to_k.weight"])
    with pytest.raises(CheckpointError, match="missing keys"):
        fuse_animatediff_lora(model.unet.unet, {f"{target}.processor.to_v_lora.down.weight": torch.zeros(4, 32)}, 1.0,
                              label="half a pair")
    with pytest.raises(CheckpointError, match="unexpected keys"):
        fuse_animatediff_lora(model.unet.unet, {"lora_unet_down_blocks_0.alpha": torch.ones(())}, 1.0, label="kohya")


def test_single_file_ldm_base_replaces_the_2d_weights(source, files, tmp_path):
    """A DreamBooth-style single-file LDM checkpoint replaces VAE, text encoder and 2D UNet (converted with
    diffusers' own converters); motion, pose and CVSM weights stay those of the published files."""
    base_model = random_model(seed=4)
    ldm = to_ldm(base_model)
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))
    model = CVDModel.from_official(tiny_config(), dataclasses.replace(files, base=path))
    got, from_base, from_files = model.unet.unet.state_dict(), base_model.unet.unet.state_dict(), source.unet.unet.state_dict()
    for k, v in got.items():
        two_d = not any(s in k for s in (".motion_modules.", ".epi_modules.", ".processor."))
        assert torch.equal(v, (from_base if two_d else from_files)[k]), k
    for name in ("vae", "text_encoder"):
        for k, v in getattr(model, name).state_dict().items():
            assert torch.equal(v, getattr(base_model, name).state_dict()[k]), f"{name}.{k}"
    bad = tmp_path / "bad.safetensors"
    save_file({**{k: v.contiguous() for k, v in ldm.items()}, "some_other_model.weight": torch.zeros(3)}, str(bad))
    with pytest.raises(CheckpointError, match=r"(?s)single-file LDM checkpoint.*\n  unexpected keys \(1\): some_other_model"):
        CVDModel.from_official(tiny_config(), dataclasses.replace(files, base=bad))
    extra = {**{k: v.contiguous() for k, v in ldm.items()}, "model.diffusion_model.input_blocks.1.0.extra.weight": torch.zeros(3)}
    save_file(extra, str(bad))
    with pytest.raises(CheckpointError, match=r"(?s)unet does not match.*unexpected keys \(1\): down_blocks\.0\.resnets\.0\.extra"):
        CVDModel.from_official(tiny_config(), dataclasses.replace(files, base=bad))


# ---------------------------------------------------------------------------------------------- our format


def test_save_pretrained_round_trips_exactly(source, tmp_path):
    out = source.save_pretrained(tmp_path / "model")
    assert {p.name for p in out.iterdir()} == {"cvd_model.json", "unet", "pose_encoder", "vae", "text_encoder",
                                               "tokenizer", "scheduler"}
    back = CVDModel.from_pretrained(out)
    _same_weights(back, source)
    assert back.config == source.config
    assert back.tokenizer("a red sofa").input_ids == source.tokenizer("a red sofa").input_ids
    assert back.scheduler.config["steps_offset"] == 1 and back.scheduler.config["beta_end"] == 0.012
    assert torch.equal(_predict(back), _predict(source))
    with pytest.raises(FileExistsError):
        source.save_pretrained(out)
    half = CVDModel.from_pretrained(source.save_pretrained(tmp_path / "half", dtype=torch.float16))
    assert half.unet.dtype == torch.float16


def test_our_format_is_loaded_strictly_too(source, tmp_path):
    out = source.save_pretrained(tmp_path / "model")
    file = out / "pose_encoder" / "diffusion_pytorch_model.safetensors"
    state = read_state_file(file)
    state["encoder_conv_in.extra"] = torch.zeros(1)
    del state["encoder_conv_in.bias"]
    save_file(state, str(file))
    with pytest.raises(CheckpointError, match=r"(?s)pose_encoder .*missing keys \(1\): encoder_conv_in\.bias"):
        CVDModel.from_pretrained(out)
    with pytest.raises(FileNotFoundError, match="cvd_model.json is missing"):
        CVDModel.from_pretrained(tmp_path)


def test_convert_command_round_trip(source, files, tmp_path, capsys):
    from cvd_scene.cli import main

    out = tmp_path / "converted"
    args = ["convert", "--cvd", str(files.cvd), "--cameractrl", str(files.cameractrl), "--motion", str(files.motion),
            "--sd15", str(files.sd15), "--model", "tiny", "--dtype", "float32", str(out)]
    assert main(args) == 0
    back = CVDModel.from_pretrained(out)
    _same_weights(back, source)
    meta = json.loads((out / "cvd_model.json").read_text())
    assert meta["sources"]["cvd"]["path"] == str(files.cvd)
    assert meta["config"]["epipolar_bias"]["convention"] == "release"
    assert back.config.epipolar_bias.convention == "release"
    missing = [a if a != str(files.motion) else str(tmp_path / "v3_sd15_mm.ckpt") for a in args]
    missing[-1] = str(tmp_path / "other")
    assert main(missing) == 2
    err = capsys.readouterr().err
    assert re.search(r"--motion: the file .*v3_sd15_mm\.ckpt does not exist", err)
    assert not (tmp_path / "other").exists()


def test_bias_convention_is_recorded_and_read_by_provenance(source, files, tmp_path):
    """convert -> save -> load keeps the release's convention; a cvd_model.json without the field reads as the
    release's when converted from the published files and as ours when trained here (the committed tiny-trained)."""
    converted = CVDModel.from_official(tiny_config(), files)
    assert converted.config.epipolar_bias.convention == "release"
    assert converted.unet.config.epipolar_bias.convention == "release"  # what the pipeline reads
    out = converted.save_pretrained(tmp_path / "converted", sources={"cvd": {}, "cameractrl": {}})
    assert CVDModel.from_pretrained(out).config.epipolar_bias.convention == "release"
    trained = source.save_pretrained(tmp_path / "trained", sources={"trained_by": "cvd.training"})
    for folder, expected in ((out, "release"), (trained, "ours")):
        meta = json.loads((folder / "cvd_model.json").read_text())
        assert meta["config"]["epipolar_bias"]["convention"] == expected
        del meta["config"]["epipolar_bias"]["convention"]  # a file written before the field existed
        (folder / "cvd_model.json").write_text(json.dumps(meta))
        back = CVDModel.from_pretrained(folder)
        assert back.config.epipolar_bias.convention == expected
        assert back.unet.config.epipolar_bias.convention == expected
    # An explicit choice in the file or the caller's config wins over the provenance.
    override = dataclasses.replace(tiny_config(), epipolar_bias=EpipolarBiasConfig(convention="ours"))
    assert CVDModel.from_pretrained(out, config=override).config.epipolar_bias.convention == "ours"
    committed = Path(__file__).parents[1] / "models" / "tiny-trained"
    assert "convention" not in json.loads((committed / "cvd_model.json").read_text())["config"]["epipolar_bias"]
    assert CVDModel.from_pretrained(committed).config.epipolar_bias.convention == "ours"


def test_legacy_vae_attention_names_are_renamed():
    legacy = {"encoder.mid_block.attentions.0.query.weight": torch.zeros(1),
              "decoder.mid_block.attentions.0.proj_attn.bias": torch.zeros(1),
              "encoder.conv_in.weight": torch.zeros(1)}
    assert set(modern_vae_names(legacy)) == {"encoder.mid_block.attentions.0.to_q.weight",
                                             "decoder.mid_block.attentions.0.to_out.0.bias", "encoder.conv_in.weight"}


def _exact_sinusoid(length: int, channels: int) -> torch.Tensor:  # [1, L, C] float64, the published formula
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, channels, 2, dtype=torch.float64) * (-torch.log(torch.tensor(10000.0)) / channels))
    pe = torch.zeros(1, length, channels, dtype=torch.float64)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe


def test_stored_position_tables_are_checked_at_the_precision_of_the_file(data_dir, sd15_parts):
    """The published files' pos_encoder.pe tables (keys and shapes of tests/data/official_layout) hold the exact
    sinusoid: stored in float32 or float16 they pass; a float32 table off by 1e-4, or a float16 table off by two
    units in its last place, does not (the former 2e-3 tolerance let both through)."""
    checks = (
        ("animatediff_v3_mm", map_motion_state, dict(sd15_parts["unet"].unet.named_buffers()), motion_key_from_official),
        ("cameractrl_pose_encoder", map_pose_encoder_state, dict(sd15_parts["pose_encoder"].named_buffers()), None),
    )
    for name, mapping, rebuilt, rebuilt_key in checks:
        _, shapes = mapping(_layout(data_dir, name))
        assert len(shapes) == {"animatediff_v3_mm": 40, "cameractrl_pose_encoder": 8}[name]
        for dtype in (torch.float32, torch.float16):
            tables = {k: _exact_sinusoid(s[1], s[2]).to(dtype) for k, s in shapes.items()}
            check_tables(tables, rebuilt, label=name, rebuilt_key=rebuilt_key)  # the exact sinusoid at the file's precision passes
        key = next(iter(shapes))
        exact = _exact_sinusoid(shapes[key][1], shapes[key][2])
        off32 = exact.float().clone()
        off32[0, 5, 7] += 1e-4
        off16 = exact.half().clone()
        off16[0, 5, 1] = off16[0, 5, 1] + 2 * torch.finfo(torch.float16).eps  # a value in [0.5, 1]: 2 ulps
        for bad, dtype in ((off32, "float32"), (off16, "float16")):
            with pytest.raises(CheckpointError, match=rf"{re.escape(key)} \({dtype}\) differs .* \(tolerance"):
                check_tables({key: bad}, rebuilt, label=name, rebuilt_key=rebuilt_key)


def test_an_override_config_reads_only_the_stored_bias_convention(tmp_path):
    """``from_pretrained(config=...)`` replaces the stored model config, so a stored config this code cannot parse
    (a key from a newer version) does not stop the load; the stored bias convention still fills an override that
    leaves it None, and a bad one is an error naming the file and the value."""
    folder = CVDModel.from_config(tiny_config(), seed=0).save_pretrained(tmp_path / "m")
    meta_path = folder / "cvd_model.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["from_a_newer_version"] = 1
    meta["config"]["epipolar_bias"]["convention"] = "release"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="from_a_newer_version"):
        CVDModel.from_pretrained(folder)  # the stored config alone: parsed strictly
    back = CVDModel.from_pretrained(folder, config=tiny_config())
    assert back.config.epipolar_bias.convention == "release"  # the file's, the override left it None
    assert not hasattr(back.config, "from_a_newer_version")
    meta["config"]["epipolar_bias"]["convention"] = "bogus"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"cvd_model\.json: config\.epipolar_bias: .*'bogus'"):
        CVDModel.from_pretrained(folder, config=tiny_config())
