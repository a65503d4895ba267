"""Samplers, schedules and denoisers (k-diffusion's style).

The contract every sampler follows:

    sample_x(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, **options) -> Tensor

- `model(x, sigma, **extra_args) -> denoised`: a denoiser (see `denoisers.py`) that returns its estimate
  of the clean latent x0 for a noisy `x` at noise level `sigma` (a (B,) tensor). Samplers never know
  whether the network predicts eps or v, nor about classifier-free guidance.
- `x`: the starting latent, already scaled to `sigmas[0]` (pure noise * sigmas[0] for txt2img).
- `sigmas`: decreasing noise levels, usually ending with 0 (a schedule from `schedules.py`).
- `callback({"i", "x", "sigma", "sigma_hat", "denoised"})` after each step, for progress, previews and
  cancellation (it may raise to stop).
- `noise_sampler(sigma, sigma_next) -> Tensor` shaped like x, for ancestral and SDE samplers; the
  pipeline passes one built from the per-image seeds (`noise.py`) so that image i of a batch equals
  that seed generated alone.
"""
