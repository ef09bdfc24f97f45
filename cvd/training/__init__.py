"""Training the CVD model: the hybrid data (folded posed clips and homography pairs), the trainer and the toy
consistency measure.

* :mod:`cvd.training.config` -- :class:`~cvd.training.config.TrainConfig` (``configs/train/<name>.yaml``).
* :mod:`cvd.training.samples` -- :class:`~cvd.training.samples.PairSample`, folding, resize/crop with intrinsics,
  flips.
* :mod:`cvd.training.datasets` -- RealEstate10K-style folders, monocular video folders, clip caches, homography
  pairs, the mixing sampler and the step-indexed stream.
* :mod:`cvd.training.homography` -- the linearly growing homography, the warp and its validity mask.
* :mod:`cvd.training.cache` -- the compact clip cache file.
* :mod:`cvd.training.tokenizer`, :mod:`cvd.training.autoencoder` -- the pieces of a small model from scratch.
* :mod:`cvd.training.trainer` -- :class:`~cvd.training.trainer.Trainer`.
* :mod:`cvd.training.sampling`, :mod:`cvd.training.metrics` -- the pair sampler with a fixed partner (the
  pipeline, :class:`cvd.pipeline.CVDPipeline`, with fixed latents), the toy measure, PSNR/SSIM.

Must never import ``cvd_scene`` (the reference-renderer adapter lives in ``cvd_scene.train.data``).
"""
