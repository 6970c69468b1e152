"""Video-GMAE pretraining: a VideoMAE encoder, tube (or random) masking, Gaussians that move over
the frames. One process per GPU under torchrun, or a plain CPU demo.

    python recipes/gmae_video.py --preset demo                         # CPU, ~2 min of one core
    torchrun --nproc_per_node 8 recipes/gmae_video.py --data-path /clips
    python recipes/gmae_video.py --help                                # every setting

``--preset paper`` carries the Video-GMAE authors' settings (docs/video.md gives each one's
source); ``--data-path DIR`` reads ``DIR/<clip>/<frames>`` with VideoMAE's frame sampling
(``--num-frames`` frames ``--frame-stride`` apart). It shares the image recipe's loop: exact
resume (``--resume auto``), SIGTERM / SIGUSR1 checkpoint and exit, ``metrics.jsonl`` and
TensorBoard, PNG strips of frames, and evaluations under fixed masks whose last line gives the
masked-patch PSNR.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange
from splathead import DecoderSettings, VideoGMAE, wrap
from splathead.render.renderer import BackendName
from splathead.video_masking import frame_patch_mask
from splathead.video_model import VideoGMAEOutput
from splathead.viz import hide_patches, save_video_strip
from torch import nn
from torch.utils.data import DataLoader, Dataset

from splathead_recipes.cli import ConfigError, check_fields, option, parse_with, parser_for
from splathead_recipes.crops import CentreCrop, TrainCrop
from splathead_recipes.data import build_loader
from splathead_recipes.distributed import Runtime
from splathead_recipes.eval_step import evaluate
from splathead_recipes.loop import StepHook, fit, run_recipe, seed_everything
from splathead_recipes.optim import build_optimizer, learning_rate
from splathead_recipes.pretrain_eval import CollapseWatch, health_sums
from splathead_recipes.settings import (
    RunConfig, check_devices, check_output, check_ranges, uses_cuda)
from splathead_recipes.train_step import AUTOCAST_DTYPES, StepResult
from splathead_recipes.video_data import (
    ClipFolder, FrameSampling, MovingSprites, VideoBatch, collate_clips)

log = logging.getLogger("gmae")

# VideoMAE encoders by name: (width, blocks, heads), VideoMAE's ViT-S/B/L and a tiny one.
ENCODERS = {"videomae_tiny": (96, 3, 3), "videomae_small": (384, 12, 6),
            "videomae_base": (768, 12, 12), "videomae_large": (1024, 24, 16)}
_MASK_SEED = 0x76696465  # mixed with --seed: evaluation masks never repeat training's


@dataclass(frozen=True)
class VideoConfig(RunConfig):
    """Every setting of a video pretraining run: :class:`RunConfig`'s (some with the video
    defaults) and the Video-GMAE's own. Defaults: the Video-GMAE authors' run (:data:`PAPER`)."""

    # Input (RunConfig's, video defaults).
    img_size: int = option(224, "frame size in pixels")
    patch_size: int = option(16, "encoder patch size in pixels")
    data_path: str | None = option(None, "folder of clips: frame folders or video files "
                                   "(dataset clips)")
    num_workers: int = option(8, "data loader processes per GPU")

    # Model.
    encoder: Literal["videomae_tiny", "videomae_small", "videomae_base", "videomae_large"] = option(
        "videomae_large", "VideoMAE encoder size (random weights, or --encoder-weights)")
    encoder_weights: str | None = option(None, "folder of a saved Hugging Face VideoMAEModel "
                                         "(save_pretrained) to start the encoder from; read "
                                         "locally, never downloaded")
    num_frames: int = option(12, "frames per clip")
    tubelet_size: int = option(1, "frames per encoder tubelet")
    num_gaussians: int = option(512, "Gaussians per video (the same ones in every frame)")
    gaussians_per_token: int = option(1, "Gaussians each decoder query predicts")
    max_scale: float = option(0.125, "largest Gaussian std in scene units")
    max_step: float = option(1 / 16, "largest step of a Gaussian's centre between frames (each "
                             "axis, scene units)")
    masking: Literal["tube", "random"] = option("random", "tube (VideoMAE) or random over the "
                                                "tubelet grid (MAE-ST, the authors)")
    mask_ratio: float = option(0.9, "fraction of tubelets hidden from the encoder, in (0, 1)")
    delta_weight: float = option(0.0, "weight of the L2 penalty on the Gaussians' steps and "
                                 "colour changes")
    decoder_dim: int = option(512, "decoder width (a multiple of 16)")
    decoder_depth: int = option(8, "decoder blocks")
    decoder_heads: int = option(16, "decoder attention heads")
    render_backend: BackendName = option("auto", "splatting backend")

    # Data.
    dataset: Literal["clips", "sprites"] = option(
        "clips", "clips: <data-path>/<clip>/<frames> or video files; sprites: moving textured "
        "sprites drawn in code")
    frame_stride: int = option(1, "frames between sampled frames (VideoMAE's sampling rate)")
    verify_frames: bool = option(True, "open every frame's header before training (clips)")
    samples_per_epoch: int = option(512_000, "epoch length of the sprites")
    sprite_clips: int = option(0, "distinct sprite clips to cycle through, the evaluation "
                               "scoring the first --eval-clips of them (0: a new clip every "
                               "sample, the evaluation on clips of its own)")

    # Optimisation (RunConfig's, video defaults) and AdamW's betas.
    batch_size: int = option(512, "global batch of clips: world size x per-GPU x accum steps")
    blr: float = option(4e-4, "base learning rate; lr = blr x batch_size / 256")
    warmup_epochs: float = option(0.02, "linear warmup length in epochs")
    epochs: int = option(1000, "training length in epochs")
    precision: Literal["bf16", "fp16", "fp32"] = option("fp32", "autocast dtype (fp32: none)")
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas")
    seed: int = option(67, "seed for initialisation, data order, augmentation and masking")
    output_dir: str = option("runs/gmae_video", "checkpoints, metrics and images")

    # Evaluation and pictures.
    eval_clips: int = option(32, "clips every evaluation scores: fixed sprite clips, or the "
                             "folder's first clips")
    image_every: int = option(1000, "steps between PNG strips of frames (0: never)")
    num_images: int = option(2, "videos per PNG strip")


# The authors' run: tekotan/video-gmae, scripts/launch_gmae_video.sh at commit 5f7c06b (its last,
# uncommented command; removed from the repository in 8d57275) over configs/gmae_ema.yaml at
# c630810 (configs/gmae.yaml, which that script names, holds the same values at these lines).
# Model code: vidgmae/models/components/mae/models_mae_video.py (MV), vidgmae/models/gmae.py (GM).
PAPER = VideoConfig(
    encoder="videomae_large",  # launch :250 model_name=mae_vit_large_patch16 (MV :1246-1251)
    img_size=224,  # launch :252 input_size=224
    num_frames=12,  # launch :265 seq_length=12 (gmae_ema.yaml :171 has 16)
    frame_stride=1,  # launch :266 sample_rate=1 (gmae_ema.yaml :172 has 4)
    patch_size=16,  # MV :1248 patch_size=16
    tubelet_size=1,  # MV :603-606 embeds every frame on its own (2D patches)
    num_gaussians=512,  # launch :272 vocab_size=512, GM :114 num_gaussian=cfg.vocab_size
    gaussians_per_token=1,  # gmae_ema.yaml :242 scale_vocab: 1.0
    max_scale=1 / 8,  # gmae_ema.yaml :241 scale_factor: 1.0 (MV :791), c = 1 under our camera
    max_step=1 / 16,  # MV :790 and :925: 5 tanh / 10 at camera distance 8
    masking="random",  # MV :621 random_masking over every frame's patches
    mask_ratio=0.9,  # gmae_ema.yaml :222 mask_ratio: 0.90
    delta_weight=0.0,  # gmae_ema.yaml :244 deltas_reg_weight: 0.0
    decoder_dim=512, decoder_depth=8, decoder_heads=16,  # MV :1252-1254
    batch_size=512,  # launch :256 train_batch_size=2 x :248 devices=8 x :249 num_nodes=32
    blr=4e-4,  # launch :253 lr=4e-4, scaled by batch / 256 (GM :1243-1253)
    min_lr=0.0,  # GM :1335-1345 cosine to 0
    warmup_epochs=0.02,  # launch :263 warmup_steps=20 of :270 limit_train_batches=1000
    epochs=1000,  # launch :264 max_epochs=1000
    weight_decay=0.05,  # launch :254 weight_decay=5e-2
    betas=(0.9, 0.95),  # GM :1307
    clip_grad=2.0,  # launch :260 gradient_clip_val=2.0 (by value there, :276; by norm here)
    precision="fp32",  # configs/trainer/default.yaml :25 precision: 32
    seed=67,  # gmae_ema.yaml :89 seed: 67
)

PRESETS: dict[str, VideoConfig] = {
    "paper": PAPER,
    # A tiny VideoMAE on 8 sprite clips (as the image demo learns its 8 photos): 125 s of one
    # core's CPU for 768 steps, 18.27 dB masked PSNR. 4 Gaussians per query (16 queries a frame)
    # halve the step's cost; docs/video.md has what this and the earlier settings reached.
    "demo": VideoConfig(
        encoder="videomae_tiny", img_size=32, num_frames=4, patch_size=4, tubelet_size=2,
        num_gaussians=64, gaussians_per_token=4, max_scale=0.25, masking="tube",
        mask_ratio=0.75, decoder_dim=64, decoder_depth=2, decoder_heads=4, dataset="sprites",
        sprite_clips=8, eval_clips=8, samples_per_epoch=256, frame_stride=1, num_workers=1,
        batch_size=16, lr=3e-3, warmup_epochs=1.0, epochs=48, seed=0, device="cpu",
        output_dir="runs/video_demo", checkpoint_every=256, eval_every=8, log_every=4,
        image_every=256),
}


def validate(config: VideoConfig, *, world_size: int, cuda_available: bool) -> None:
    """Raise :class:`ConfigError` for any setting that would fail later, before any work."""
    for problem in (check_fields(config), _check_ranges(config), _check_data(config),
                    check_output(config), check_devices(config, world_size, cuda_available)):
        if problem:
            raise ConfigError(problem)
    if config.render_backend == "gsplat" and not uses_cuda(config, cuda_available):
        raise ConfigError("--render-backend gsplat needs CUDA; use torch (or auto) on CPU")


def _check_ranges(config: VideoConfig) -> str | None:
    if not 0 < config.mask_ratio < 1:
        return f"--mask-ratio must lie in (0, 1), got {config.mask_ratio}"
    if problem := check_ranges(
            config, at_least_one=("num_frames", "patch_size", "tubelet_size", "num_gaussians",
                                  "gaussians_per_token", "decoder_depth", "decoder_heads",
                                  "frame_stride", "samples_per_epoch", "eval_clips"),
            non_negative=("image_every", "num_images", "delta_weight", "sprite_clips")):
        return problem
    if config.num_frames % config.tubelet_size:
        return (f"--num-frames {config.num_frames} is not a multiple of --tubelet-size "
                f"{config.tubelet_size}")
    if config.num_gaussians % config.gaussians_per_token:
        return (f"--num-gaussians {config.num_gaussians} is not divisible by "
                f"--gaussians-per-token {config.gaussians_per_token}")
    if config.decoder_dim % 16 or config.decoder_dim % config.decoder_heads:
        return (f"--decoder-dim {config.decoder_dim} must be a multiple of 16 and of "
                f"--decoder-heads {config.decoder_heads}")
    if config.max_scale <= 0 or config.max_step <= 0:
        return (f"--max-scale and --max-step must be positive, got {config.max_scale}, "
                f"{config.max_step}")
    if not all(0 <= beta < 1 for beta in config.betas):
        return f"--betas must lie in [0, 1), got {config.betas}"
    if config.img_size < 11:
        return f"--img-size {config.img_size}: the evaluation's SSIM needs at least 11 px"
    slots = config.num_frames // config.tubelet_size
    patches = (config.img_size // config.patch_size) ** 2
    kept = (patches if config.masking == "tube" else slots * patches) * (1 - config.mask_ratio)
    if int(kept) < 1:
        return (f"--mask-ratio {config.mask_ratio} leaves no visible tubelet ({config.masking} "
                f"masking of {slots} x {patches} tubelets); lower it or raise --img-size")
    return None


def _check_data(config: VideoConfig) -> str | None:
    if config.dataset == "clips":
        if config.data_path is None:
            return "dataset clips needs --data-path (a folder of clip folders), or use " \
                   "--dataset sprites"
        if not Path(config.data_path).is_dir():
            return f"--data-path {config.data_path}: no such folder"
    if config.encoder_weights is not None and not Path(config.encoder_weights).is_dir():
        return f"--encoder-weights {config.encoder_weights}: no such folder"
    return None


def build_parser():
    return parser_for(PRESETS, "Video-GMAE pretraining (torchrun for several GPUs or nodes).")


def parse_config(argv: list[str] | None = None) -> VideoConfig:
    return parse_with(build_parser(), PRESETS, argv)


def build_dataset(config: VideoConfig) -> Dataset:
    """The training clips; :class:`ConfigError` naming the flag for clips that cannot work."""
    if config.dataset == "sprites":
        return MovingSprites(num_frames=config.num_frames, size=config.img_size,
                             length=config.samples_per_epoch, clips=config.sprite_clips)
    crop = TrainCrop(config.img_size, config.crop_scale, hflip=config.hflip,
                     style=config.crop_style, jpeg_draft=config.jpeg_draft)
    try:
        return ClipFolder(config.data_path, sampling=FrameSampling(config.num_frames,
                                                                   config.frame_stride),
                          crop=crop, verify=config.verify_frames)
    except ValueError as error:
        raise ConfigError(f"--data-path {config.data_path}: {error} (--num-frames "
                          f"{config.num_frames}, --frame-stride {config.frame_stride})") from None


def decoder_settings(config: VideoConfig) -> DecoderSettings:
    """The image decoder's settings the video decoder is built with (queries per frame)."""
    return DecoderSettings(dim=config.decoder_dim, depth=config.decoder_depth,
                           num_heads=config.decoder_heads,
                           num_queries=config.num_gaussians // config.gaussians_per_token,
                           gaussians_per_token=config.gaussians_per_token,
                           max_scale=config.max_scale, backend=config.render_backend)


def build_model(config: VideoConfig) -> VideoGMAE:
    """A VideoGMAE with a Hugging Face VideoMAE encoder (random weights or --encoder-weights)."""
    import transformers

    if config.encoder_weights is not None:
        videomae = transformers.VideoMAEModel.from_pretrained(config.encoder_weights,
                                                              local_files_only=True)
    else:
        width, depth, heads = ENCODERS[config.encoder]
        videomae = transformers.VideoMAEModel(transformers.VideoMAEConfig(
            hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
            intermediate_size=4 * width, image_size=config.img_size,
            patch_size=config.patch_size, num_frames=config.num_frames,
            tubelet_size=config.tubelet_size))
    try:
        return VideoGMAE.from_encoder(
            wrap(videomae), img_size=config.img_size, num_frames=config.num_frames,
            masking=config.masking, mask_ratio=config.mask_ratio,
            delta_weight=config.delta_weight, max_step=config.max_step,
            decoder_settings=decoder_settings(config))
    except ValueError as error:
        raise ConfigError(f"the model cannot be built from these settings: {error}") from None


def video_loss(model: nn.Module, batch: VideoBatch) -> tuple[torch.Tensor, VideoGMAEOutput]:
    """The Video-GMAE loss: MSE of every frame's render on its hidden patches."""
    output = model(batch.videos)
    return output.loss, output


def save_strip(path: Path, model: VideoGMAE, videos: torch.Tensor, output: VideoGMAEOutput,
               count: int) -> None:
    """input | masked input | render | Gaussians, one column per frame, for ``count`` videos."""
    inputs = model.unnormalize(videos[:count].detach().float())
    hidden = frame_patch_mask(output.mask.mask[:count], model.grid_size[0], model.tubelet_size)
    masked = rearrange(
        hide_patches(rearrange(inputs, "b t c h w -> (b t) c h w"),
                     rearrange(hidden, "b t p -> (b t) p"), model.patch_size),
        "(b t) c h w -> b t c h w", b=inputs.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_video_strip(path, inputs, masked, output.image[:count].detach().float(),
                     output.gaussians[:count].detach(), model.camera, max_videos=count)


def strip_dumps(config: VideoConfig, model: VideoGMAE, runtime: Runtime) -> StepHook:
    """Every ``image_every`` steps rank 0 writes ``images/step_<step>.png``."""

    def dump(step: int, result: StepResult) -> dict[str, float]:
        if runtime.is_main and config.image_every and step % config.image_every == 0:
            videos = result.batch.videos
            save_strip(Path(config.output_dir) / "images" / f"step_{step:08d}.png", model,
                       videos, result.output, min(config.num_images, videos.shape[0]))
        return {}

    return dump


class FixedMaskVideoEvaluation:
    """Every evaluation scores the same clips under the same masks (drawn from the run's seed
    and each clip's index, never from the global generators, so training resumes bit for bit).

    Returns per-clip means of ``psnr_masked`` (dB over each frame's hidden patches), ``psnr``,
    ``ssim`` and the Gaussian health ``gauss_border``, ``gauss_invisible``, ``gauss_coverage``
    (each averaged over the frames; the first evaluation that finds a collapse logs one
    warning, as the image recipe's). Rank 0's first batch and output are kept in
    :attr:`first` for a picture.
    """

    def __init__(self, model: VideoGMAE, dataset: Dataset, *, runtime: Runtime, batch_size: int,
                 seed: int, autocast: Any = None) -> None:
        self.model = model
        self.runtime = runtime
        self.autocast = autocast
        indices = range(runtime.rank, len(dataset), runtime.world_size)
        noise_length = model.noise_length
        self.noise = torch.stack([
            torch.rand(noise_length, generator=torch.Generator().manual_seed(
                seed * 1_000_003 + _MASK_SEED + index)) for index in indices])
        self.loader = DataLoader(dataset, batch_size=batch_size,
                                 sampler=[(index, seed + index) for index in indices],
                                 collate_fn=collate_clips,
                                 # its seed comes from here, not from torch's global generator
                                 generator=torch.Generator().manual_seed(seed))
        self.first: tuple[torch.Tensor, VideoGMAEOutput] | None = None
        self.collapse_watch = CollapseWatch()

    def __call__(self, step: int) -> dict[str, Any]:
        from splathead.metrics import masked_psnr, psnr, ssim

        seen = 0

        def measure(model: nn.Module, batch: VideoBatch) -> dict[str, torch.Tensor]:
            nonlocal seen
            count = batch.videos.shape[0]
            output = model(batch.videos, noise=self.noise[seen: seen + count].to(
                batch.videos.device))
            if seen == 0 and self.runtime.is_main:
                self.first = (batch.videos, output)
            seen += count
            frames = self.model.num_frames
            render = rearrange(output.image.float().clamp(0, 1), "b t c h w -> (b t) c h w")
            target = rearrange(model.unnormalize(batch.videos.float()),
                               "b t c h w -> (b t) c h w")
            hidden = rearrange(frame_patch_mask(output.mask.mask, model.grid_size[0],
                                                model.tubelet_size), "b t p -> (b t) p")
            sums = {"psnr_masked": masked_psnr(render, target, hidden, model.patch_size).sum(),
                    "psnr": psnr(render, target).sum(), "ssim": ssim(render, target).sum(),
                    **health_sums(output.gaussians.flatten(), model.renderer)}
            # Per-frame values, averaged over each clip's frames, summed over clips.
            return {name: total / frames for name, total in sums.items()}

        results = evaluate(self.model, self.loader, measure, device=self.runtime.device,
                           autocast=self.autocast)
        log.info("step %d evaluation: %s", step,
                 ", ".join(f"{name} {value:.4g}" for name, value in results.items()))
        self.collapse_watch(step, results)
        return results


def eval_clips(config: VideoConfig) -> Dataset:
    """The clips every evaluation scores, each from its fixed seed: sprite clips (with
    ``--sprite-clips``, the first of the training clips), or the first ``eval_clips`` clips of
    the folder (centre crops; training clips too, as nothing is held out of a folder)."""
    if config.dataset == "sprites":
        return MovingSprites(num_frames=config.num_frames, size=config.img_size,
                             length=config.eval_clips, clips=config.sprite_clips)
    return ClipFolder(config.data_path, sampling=FrameSampling(config.num_frames,
                                                               config.frame_stride),
                      crop=CentreCrop(config.img_size), verify=False,
                      max_clips=config.eval_clips)


def eval_picture(config: VideoConfig, step: int) -> Path:
    return Path(config.output_dir) / "images" / f"eval_{step:08d}.png"


def train(config: VideoConfig, runtime: Runtime) -> int:
    """Build the clips, the VideoGMAE and its optimiser, and hand them to the shared loop."""
    use_cuda = runtime.device.type == "cuda"
    dataset = build_dataset(config)
    loader, sampler = build_loader(config, dataset, rank=runtime.rank,
                                   world_size=runtime.world_size,
                                   pin_memory=config.pin_memory and use_cuda,
                                   collate_fn=collate_clips)
    seed_everything(config.seed)  # identical initial weights on every rank
    model = build_model(config).to(runtime.device)
    # timm's groups (no decay on the query tokens and embeddings), as the image recipe's default.
    optimizer = build_optimizer(model, config, decay_groups="timm", fused=use_cuda)
    log.info("%s encoder, %d frames, peak lr %.3g", config.encoder, config.num_frames,
             config.learning_rate)
    autocast = (torch.autocast(runtime.device.type, dtype=AUTOCAST_DTYPES[config.precision])
                if config.precision in AUTOCAST_DTYPES else None)
    evaluation = FixedMaskVideoEvaluation(model, eval_clips(config), runtime=runtime,
                                          batch_size=loader.batch_size, seed=config.seed,
                                          autocast=autocast)
    finals: dict[int, dict] = {}

    def evaluate_and_draw(step: int) -> dict:
        results = finals[step] = evaluation(step)
        if runtime.is_main and config.image_every and config.num_images and evaluation.first:
            videos, output = evaluation.first
            save_strip(eval_picture(config, step), model, videos, output,
                       min(config.num_images, videos.shape[0]))
        return results

    def schedule(step: int) -> float:
        return learning_rate(step, config=config, steps_per_epoch=sampler.steps_per_epoch)

    status = fit(config, runtime, model=model, optimizer=optimizer, forward=video_loss,
                 loader=loader, sampler=sampler, schedule=schedule,
                 hooks=[strip_dumps(config, model, runtime)], evaluation=evaluate_and_draw,
                 eval_interval=config.eval_every * sampler.steps_per_epoch)
    if runtime.is_main and finals:
        step, results = max(finals.items(), key=lambda item: item[0])
        picture = eval_picture(config, step)
        look = f"pictures: {picture}, " if picture.exists() else ""
        print(f"step {step}: {look}metrics: {Path(config.output_dir) / 'metrics.jsonl'}; "
              f"psnr_masked={results['psnr_masked']:.2f} dB (psnr {results['psnr']:.2f} dB, "
              f"ssim {results['ssim']:.3f})")
    return status


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done (or checkpointed on a signal), 1 failed in training, 2 bad settings,
    data or checkpoint, found before any training step."""
    return run_recipe(parse_config(argv), validate=validate, train=train)


if __name__ == "__main__":
    sys.exit(main())
