"""The CVD model on diffusers, at tiny widths on the CPU: per-frame motion norm, pose injection, CVSMs and their
cross-view attention, the cross-view context, and the UNet call's freedom from host synchronisation."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
import torch.nn.functional as F

from cvd.context import CrossViewContext, epipolar_biases, guided_rows, level_grids
from cvd.cvsm import CrossViewAttention, cross_view_attention_reference
from cvd.geometry import EpipolarBiasConfig
from cvd.model import CVDModel
from cvd.model_config import CVSMConfig
from cvd.motion import PerFrameGroupNorm, use_per_frame_motion_norm
from cvd.unet import CVDUNet, motion_unet_kwargs
from tests.cvd_testing import camera_inputs, random_model, randomize_, tiny_config, unet_inputs

torch.set_num_threads(1)
NUM_FRAMES = 3
SIZE = 64


@pytest.fixture(scope="module")
def model() -> CVDModel:
    return random_model(seed=1)


def _pair_context(model: CVDModel, mode: str = "soft", **kwargs) -> CrossViewContext:
    """Guided pair [uncond_A, cond_A, uncond_B, cond_B] with camera features and the epipolar bias."""
    K, c2w = camera_inputs(2, NUM_FRAMES, SIZE)
    rv, rb = guided_rows(2)
    grids = model.unet.level_grids((SIZE // 8, SIZE // 8))
    bias = epipolar_biases(K, c2w, [1, 0], image_hw=(SIZE, SIZE), grids=grids, config=EpipolarBiasConfig(mode=mode),
                           generator=torch.Generator().manual_seed(0))
    feats = model.encode_cameras(K.float(), c2w.float(), SIZE, SIZE)
    args = {"row_video": rv, "row_branch": rb, "partner_video": [1, 0], "num_frames": NUM_FRAMES, "bias": bias,
            "pose_features": feats}
    return model.unet.make_context(**{**args, **kwargs})


# ---------------------------------------------------------------------------------------------- building


def test_tiny_config_builds_fast_with_every_part():
    cfg = tiny_config()
    CVDModel.from_config(cfg)  # imports and first-use costs out of the timing
    seconds = min(_timed(lambda: CVDModel.from_config(cfg)) for _ in range(2))
    assert seconds < 2.0, f"tiny model took {seconds:.2f} s to build"
    m = CVDModel.from_config(cfg)
    names = [n for n, _ in m.unet.cvsms()]
    # 1 layer per down level, 2 per up level, 2 levels: 6 CVSMs, one per motion module.
    assert len(names) == 6 and all(".epi_modules." in n for n in names)
    assert len(m.unet._processors) == 6
    assert any("attentions" in n for n, _ in m.unet.unet.named_modules())  # spatial cross-attention present
    assert all(isinstance(mm.norm, PerFrameGroupNorm) for b in m.unet.unet.down_blocks for mm in b.motion_modules)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_motion_unet_matches_diffusers_from_unet2d():
    """Our UNetMotionModel config is exactly what diffusers derives from the 2D UNet + a v3 MotionAdapter."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    cfg = tiny_config()
    unet2d = UNet2DConditionModel(**cfg.unet.diffusers_kwargs())
    adapter = _adapter(cfg, MotionAdapter)
    plain = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
    ours = motion_unet_kwargs(cfg)
    for k, v in ours.items():
        got = plain.config[k]
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == v, k


def _adapter(cfg, MotionAdapter):
    return MotionAdapter(
        block_out_channels=cfg.unet.block_out_channels,
        motion_layers_per_block=cfg.unet.layers_per_block,
        motion_num_attention_heads=cfg.motion.num_attention_heads,
        motion_norm_num_groups=cfg.unet.norm_num_groups,
        motion_max_seq_length=cfg.motion.max_seq_length,
        use_motion_mid_block=False,
    )


# ---------------------------------------------------------------------------------------------- per-frame norm


@pytest.mark.parametrize("diffusers_view", [True, False])
def test_per_frame_group_norm_equals_loop_over_frames(diffusers_view):
    g = torch.Generator().manual_seed(0)
    b, c, f, h, w = 2, 16, 5, 3, 4
    norm = PerFrameGroupNorm(4, c, eps=1e-6)
    randomize_(norm, 3)
    if diffusers_view:  # as diffusers hands it over: a permuted view of [(B F), C, H, W] memory
        x = torch.randn(b * f, c, h, w, generator=g).reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
    else:
        x = torch.randn(b, c, f, h, w, generator=g)
    got = norm(x)
    ref = torch.stack([F.group_norm(x[:, :, k], 4, norm.weight, norm.bias, 1e-6) for k in range(f)], dim=2)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    all_frames = F.group_norm(x, 4, norm.weight, norm.bias, 1e-6)  # diffusers' behaviour
    assert (all_frames - ref).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------- equivalences


def test_zero_initialised_cvsms_leave_the_unet_bit_exact(model):
    """Freshly built CVSMs (zero proj_out) change nothing: same output as the same UNet without CVSMs."""
    cfg = tiny_config()
    with_cvsm = CVDUNet(cfg).eval()
    without = CVDUNet(dataclasses.replace(cfg, cvsm=CVSMConfig(enabled=False, num_attention_heads=4, norm_num_groups=8))).eval()
    randomize_(without, 5)
    state = without.state_dict()
    missing, unexpected = with_cvsm.load_state_dict(state, strict=False)
    assert not unexpected and missing and all(".epi_modules." in k for k in missing)
    model_like = CVDModel(config=cfg, unet=with_cvsm, pose_encoder=model.pose_encoder, vae=model.vae,
                          text_encoder=model.text_encoder, tokenizer=model.tokenizer, scheduler=model.scheduler)
    ctx = _pair_context(model_like)
    sample, t, text = unet_inputs(model, 4, NUM_FRAMES, SIZE)
    with torch.no_grad():
        a = with_cvsm(sample, t, text, ctx)
        b = without(sample, t, text, ctx)
    assert torch.equal(a, b)
    randomize_(with_cvsm.unet.down_blocks[0].epi_modules[0], 9)  # a trained CVSM must change the output
    with torch.no_grad():
        c = with_cvsm(sample, t, text, ctx)
    assert (c - b).abs().max() > 1e-4


@pytest.mark.parametrize("per_frame", [True, False])
def test_pose_scale_zero_is_plain_diffusers_animatediff(per_frame):
    """With injection scale 0 (and no partner) our UNet is diffusers' UNetMotionModel.from_unet2d of the same 2D
    UNet and motion adapter, with the same motion norm; scale 1 with trained merges changes it."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, motion=dataclasses.replace(cfg.motion, per_frame_norm=per_frame))
    torch.manual_seed(0)
    unet2d = randomize_(UNet2DConditionModel(**cfg.unet.diffusers_kwargs()), 11)
    adapter = randomize_(_adapter(cfg, MotionAdapter), 12)
    plain = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    if per_frame:
        use_per_frame_motion_norm(plain)
    ours = CVDUNet(cfg).eval()
    missing, unexpected = ours.unet.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".epi_modules." in k or ".processor.qkv_merge." in k for k in missing)
    merges = [p for name, p in ours.unet.named_parameters() if ".processor.qkv_merge." in name]
    randomize_(torch.nn.ParameterList(merges), 13)
    model = random_model(seed=2, config=cfg)
    K, c2w = camera_inputs(2, NUM_FRAMES, SIZE)
    feats = model.encode_cameras(K.float(), c2w.float(), SIZE, SIZE)
    rv, rb = guided_rows(2)
    ctx = CrossViewContext.for_videos(row_video=rv, row_branch=rb, num_frames=NUM_FRAMES, device="cpu",
                                      dtype=torch.float32, pose_features=feats)
    sample, t, text = unet_inputs(model, 4, NUM_FRAMES, SIZE)
    ours.set_pose_injection_scale(0.0)
    with torch.no_grad():
        a = ours(sample, t, text, ctx)
        b = plain(sample, t, text.repeat_interleave(NUM_FRAMES, dim=0)).sample
        ours.set_pose_injection_scale(1.0)
        c = ours(sample, t, text, ctx)
    assert torch.equal(a, b)
    assert (c - b).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------- cross-view attention


@pytest.mark.parametrize("with_bias", [True, False])
def test_cross_view_attention_matches_reference(with_bias):
    g = torch.Generator().manual_seed(0)
    rows, frames, n, c, heads = 4, 3, 12, 16, 4
    r = rows * frames
    attn = randomize_(CrossViewAttention(c, heads), 1, scale=0.3)
    x = torch.randn(r, n, c, generator=g)
    partner = torch.tensor([2, 3, 0, 1])
    partner_rows = (partner[:, None] * frames + torch.arange(frames)).reshape(-1)
    bias = None
    if with_bias:
        bias = -torch.rand(r, 1, n, n, generator=g) * 20
        bias[bias < -18] = -1e4  # masked entries, as the binary mode produces
    got = attn(x, partner_rows, bias)
    ref = cross_view_attention_reference(x, partner_rows, attn.to_q, attn.to_k, attn.to_v, attn.to_out[0], heads, bias)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    if with_bias:  # the bias must matter, and the partner must matter
        free = attn(x, partner_rows, None)
        assert (free - got).abs().max() > 1e-3
    self_rows = torch.arange(r)
    assert (attn(x, self_rows, bias) - got).abs().max() > 1e-3


def test_rows_attend_only_to_their_partner(model):
    """[uA, cA, uB, cB] with partner [2, 3, 0, 1]: changing cB's latents changes cA's prediction and never uA's or
    uB's (no pairing across guidance branches)."""
    ctx = _pair_context(model)
    sample, t, text = unet_inputs(model, 4, NUM_FRAMES, SIZE)
    changed = sample.clone()
    changed[3] += torch.randn_like(changed[3])
    with torch.no_grad():
        a = model.unet(sample, t, text, ctx)
        b = model.unet(changed, t, text, ctx)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert (a[1] - b[1]).abs().max() > 1e-4
    no_cross = CrossViewContext.for_videos(row_video=[0, 0, 1, 1], row_branch=[0, 1, 0, 1], num_frames=NUM_FRAMES,
                                           device="cpu", dtype=torch.float32, pose_features=None)
    with torch.no_grad():
        c = model.unet(sample, t, text, no_cross)
        d = model.unet(changed, t, text, no_cross)
    assert torch.equal(c[1], d[1])  # without a partner the rows are independent


def test_bias_modes_are_selectable_and_used(model):
    sample, t, text = unet_inputs(model, 4, NUM_FRAMES, SIZE)
    outs = {}
    for mode in ("soft", "binary", "none"):
        ctx = _pair_context(model, mode=mode)
        assert (ctx.biases[0] is None) == (mode == "none")
        with torch.no_grad():
            outs[mode] = model.unet(sample, t, text, ctx)
    assert (outs["soft"] - outs["none"]).abs().max() > 1e-5
    assert (outs["binary"] - outs["soft"]).abs().max() > 1e-5


# ---------------------------------------------------------------------------------------------- context


def test_context_layout_and_memory(model):
    ctx = _pair_context(model)
    grids = level_grids((SIZE // 8, SIZE // 8), 2)
    assert grids == [(8, 8), (4, 4)]
    rows = 4 * NUM_FRAMES
    assert [tuple(b.shape) for b in ctx.biases] == [(rows, 1, 64, 64), (rows, 1, 16, 16)]
    assert all(b.dtype == torch.float32 for b in ctx.biases)  # cast once to the model dtype
    # row r, frame f attends to its partner's same frame: partner of row 1 (cond A) is row 3 (cond B)
    assert ctx.partner_rows.view(4, NUM_FRAMES)[1].tolist() == [3 * NUM_FRAMES + f for f in range(NUM_FRAMES)]
    # one bias per level shared by all heads and modules vs the release's per-module, per-head fp32 copies
    heads, modules_per_level = model.config.cvsm.num_attention_heads, [2, 4]  # 1 down + 2 up CVSMs, 2 attentions each
    release = sum(rows * heads * m * n * n * 4 for m, (n, _) in zip(modules_per_level, [(64, 0), (16, 0)]))
    assert release / ctx.bias_bytes() >= 8
    # the pose tokens are in the motion modules' layout: [(B h w), F, C]
    assert tuple(ctx.pose_tokens[0].shape) == (4 * 8 * 8, NUM_FRAMES, 32)


def test_context_rejects_bad_pairings():
    with pytest.raises(ValueError, match="another guidance branch"):
        CrossViewContext.build(num_rows=4, num_frames=2, device="cpu", dtype=torch.float32,
                               partner=[3, 2, 1, 0], branch=[0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"partner entries must lie in \[0, 4\)"):
        CrossViewContext.build(num_rows=4, num_frames=2, device="cpu", dtype=torch.float32, partner=[1, 0, 3, 4])
    with pytest.raises(ValueError, match="needs a row of video 2"):
        CrossViewContext.for_videos(row_video=[0, 1], partner_video=[2, 0, 1], num_frames=2, device="cpu",
                                    dtype=torch.float32)
    with pytest.raises(ValueError, match="without a partner"):
        CrossViewContext.build(num_rows=2, num_frames=2, device="cpu", dtype=torch.float32,
                               bias=[torch.zeros(2, 2, 4, 4)])


def test_context_must_match_the_call(model):
    ctx = _pair_context(model)
    sample, t, text = unet_inputs(model, 4, NUM_FRAMES + 1, SIZE)
    with pytest.raises(ValueError, match="built for 4 rows x 3 frames"):
        model.unet(sample, t, text, ctx)


# ---------------------------------------------------------------------------------------------- host sync


def test_unet_call_reads_no_tensor_value_on_the_host(model, monkeypatch):
    """No .item()/.tolist()/bool()/int()/float() of a tensor inside the UNet call (on a GPU each is a sync)."""
    ctx = _pair_context(model)
    sample, t, text = unet_inputs(model, 4, NUM_FRAMES, SIZE)

    def forbidden(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host inside the UNet call")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    with torch.no_grad():
        out = model.unet(sample, t, text, ctx)
    monkeypatch.undo()
    assert out.shape == sample.shape


def test_pose_encoder_runs_once_per_sample_not_per_step(model):
    """The UNet never calls the pose encoder: its features travel in the context."""
    calls = []
    handle = model.pose_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        ctx = _pair_context(model)
        sample, _, text = unet_inputs(model, 4, NUM_FRAMES, SIZE)
        with torch.no_grad():
            for step in (900, 500):
                model.unet(sample, torch.full((4,), step), text, ctx)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_training_step_reaches_only_the_cvsms_with_and_without_checkpointing(model):
    """The trainer's path: independent timesteps per row, gradients only into the CVSMs; recomputing the CVSMs in
    the backward pass (activation checkpointing) gives the same gradients."""
    import copy

    unet = copy.deepcopy(model.unet).train()
    unet.freeze_all_but_cvsm()
    ctx = _pair_context(model)
    sample, _, text = unet_inputs(model, 4, NUM_FRAMES, SIZE)
    timesteps = torch.tensor([10, 400, 700, 999])
    grads = []
    for checkpointing in (False, True):
        unet.enable_cvsm_checkpointing(checkpointing)
        unet.zero_grad(set_to_none=True)
        unet(sample, timesteps, text, ctx).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None})
    names = {n for n, _ in unet.named_parameters() if ".epi_modules." in n}
    assert set(grads[0]) == names and all(g.abs().sum() > 0 for g in grads[0].values())
    for n in names:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)


def test_general_pairings_with_a_video_in_two_pairs(model):
    """Odd N: video 0 sits in two pairs (rows 0 and 3), each row with its own partner, bias slot and pose slot;
    the result equals running each pair on its own."""
    from cvd.context import epipolar_biases

    K, c2w = camera_inputs(3, NUM_FRAMES, SIZE)
    feats = model.encode_cameras(K.float(), c2w.float(), SIZE, SIZE)
    grids = model.unet.level_grids((SIZE // 8, SIZE // 8))
    pairs_q, pairs_k = [0, 1, 2, 0], [1, 0, 0, 2]  # rows: (0 -> 1), (1 -> 0), (2 -> 0), (0 -> 2)
    bias = epipolar_biases(K, c2w, pairs_k, query_video=pairs_q, image_hw=(SIZE, SIZE), grids=grids,
                           generator=torch.Generator().manual_seed(0))
    ctx = CrossViewContext.build(num_rows=4, num_frames=NUM_FRAMES, device="cpu", dtype=torch.float32,
                                 partner=[1, 0, 3, 2], bias=bias, bias_slot=[0, 1, 2, 3], pose_features=feats,
                                 pose_slot=pairs_q)
    sample, t, text = unet_inputs(model, 4, NUM_FRAMES, SIZE)
    with torch.no_grad():
        together = model.unet(sample, t, text, ctx)
        second = CrossViewContext.build(num_rows=2, num_frames=NUM_FRAMES, device="cpu", dtype=torch.float32,
                                        partner=[1, 0], bias=[b[2:] for b in bias], pose_features=feats,
                                        pose_slot=[2, 0])
        alone = model.unet(sample[2:], t[2:], text[2:], second)
    torch.testing.assert_close(together[2:], alone, rtol=1e-5, atol=1e-5)
