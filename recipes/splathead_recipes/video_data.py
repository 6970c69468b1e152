"""Clips for the video recipe: moving textured sprites drawn in code, and folders of clips (a
clip is a folder of frames, or a video file read with PyAV, the ``video`` extra).

Like :mod:`.data`, every random choice is a pure function of the sample's seed (the sampler hands
``(index, seed)`` pairs), so resuming is exact. A clip is uint8 ``[t 3 h w]``; :meth:`VideoBatch.to`
normalises a batch on the device.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from einops import rearrange
from PIL import Image
from torch.utils.data import Dataset

from splathead_recipes.crops import CentreCrop, TrainCrop, normalize
from splathead_recipes.data import Sample, to_rgb

log = logging.getLogger("gmae")

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
_MAX_SUBSTITUTES = 32


class VideoBatch(NamedTuple):
    videos: torch.Tensor  # [b t 3 h w]: uint8 RGB from the loader, ImageNet-normalised after to()
    labels: torch.Tensor  # [b] zeros (clips carry no labels here)
    num_skipped: int  # clips with an unreadable frame, replaced by another clip

    @property
    def images(self) -> torch.Tensor:
        """The videos, under the name the shared loop and evaluation count samples by."""
        return self.videos

    def to(self, device: torch.device) -> VideoBatch:
        """On ``device``, uint8 frames normalised there."""
        videos = self.videos.to(device, non_blocking=True)
        if videos.dtype == torch.uint8:
            frames = normalize(rearrange(videos, "b t c h w -> (b t) c h w"))
            videos = rearrange(frames, "(b t) c h w -> b t c h w", b=self.videos.shape[0])
        return VideoBatch(videos, self.labels.to(device, non_blocking=True), self.num_skipped)


def collate_clips(samples: list[Sample]) -> VideoBatch:
    """Samples of uint8 clips into one :class:`VideoBatch` (the loaders' ``collate_fn``)."""
    clips, labels, substituted = zip(*samples)
    return VideoBatch(torch.stack(clips), torch.tensor(labels), sum(substituted))


class SpriteClip(NamedTuple):
    frames: torch.Tensor  # [t 3 h w] uint8
    centres: torch.Tensor  # [k t 2] each sprite's centre (x, y) in pixels, back to front
    radii: torch.Tensor  # [k] half-widths in pixels
    squares: torch.Tensor  # [k] bool: square (else disc); a square's half-width is its radius


def draw_sprite_clip(seed: int, *, num_frames: int, size: int, num_sprites: int = 3
                     ) -> SpriteClip:
    """Textured discs and squares crossing a static textured background, nearer ones occluding.

    Background: two colours mixed along a sine wave of random direction and frequency. Sprite
    ``i`` (drawn after, so in front of, sprites ``< i``): a disc or square of random half-width
    (8-22% of ``size``) with a two-colour checker texture that moves with it, on a straight path
    at constant velocity (up to 40% of ``size`` over the clip). Edges are anti-aliased.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    colours = uniform(2, 3)
    angle = uniform(high=math.pi)
    frequency, phase = uniform(low=2.0, high=6.0), uniform(high=2 * math.pi)
    wave = torch.sin(2 * math.pi * frequency / size * (x * angle.cos() + y * angle.sin()) + phase)
    background = colours[0, :, None, None] + (colours[1] - colours[0])[:, None, None] * (
        0.5 * (1 + wave))
    frames = background.expand(num_frames, -1, -1, -1).clone()
    radii = uniform(num_sprites, low=0.08 * size, high=0.22 * size)
    starts = uniform(num_sprites, 2, low=0.2 * size, high=0.8 * size)
    velocities = uniform(num_sprites, 2, low=-0.4, high=0.4) * size / max(num_frames - 1, 1)
    times = torch.arange(num_frames, dtype=torch.float32)
    centres = starts[:, None] + velocities[:, None] * times[None, :, None]  # [k t 2]
    squares = torch.zeros(num_sprites, dtype=torch.bool)
    for sprite in range(num_sprites):
        square = bool(uniform() < 0.5)
        squares[sprite] = square
        textures = uniform(2, 3)
        cell = float(uniform(low=0.3, high=0.6)) * float(radii[sprite])
        for frame in range(num_frames):
            dx = x - centres[sprite, frame, 0]
            dy = y - centres[sprite, frame, 1]
            distance = torch.maximum(dx.abs(), dy.abs()) if square else torch.hypot(dx, dy)
            coverage = (radii[sprite] - distance + 0.5).clamp(0, 1)
            checker = ((torch.floor(dx / cell) + torch.floor(dy / cell)) % 2)[None]
            texture = textures[0, :, None, None] + (textures[1] - textures[0])[:, None, None] * checker
            frames[frame] = frames[frame] + coverage * (texture - frames[frame])
    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8)
    return SpriteClip(pixels, centres, radii, squares)


class MovingSprites(Dataset):
    """``length`` sprite clips (:func:`draw_sprite_clip`), each drawn from its sample's seed; with
    ``clips`` > 0, sample ``index`` is clip ``index % clips`` of a fixed set (drawn from seeds
    ``0 .. clips - 1``), so that a short run can learn them, as the image demo learns its photos."""

    def __init__(self, *, num_frames: int, size: int, length: int, num_sprites: int = 3,
                 clips: int = 0) -> None:
        self.num_frames = num_frames
        self.size = size
        self.length = length
        self.num_sprites = num_sprites
        self.clips = clips

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        index, seed = item
        clip = draw_sprite_clip(index % self.clips if self.clips else seed,
                                num_frames=self.num_frames, size=self.size,
                                num_sprites=self.num_sprites)
        return Sample(clip.frames, 0, False)


@dataclass(frozen=True)
class FrameSampling:
    """VideoMAE's frame sampling of one clip: ``num_frames`` frames ``stride`` apart, starting
    uniformly at random in the clip. A clip needs ``num_frames * stride`` frames (VideoMAE's
    ``skip_length``, the Video-GMAE authors' ``seq_length * sample_rate``)."""

    num_frames: int
    stride: int

    @property
    def span(self) -> int:
        return self.num_frames * self.stride

    def indices(self, clip_length: int, seed: int) -> list[int]:
        start = int(torch.randint(clip_length - self.span + 1, (1,),
                                  generator=torch.Generator().manual_seed(seed)))
        return list(range(start, start + self.span, self.stride))


def frame_files(clip: Path) -> list[Path]:
    """The frames of a clip folder, by name."""
    return sorted(path for path in clip.iterdir()
                  if path.is_file() and path.suffix.lower() in FRAME_SUFFIXES)


def _pyav():
    try:
        import av
    except ImportError:
        raise ValueError("reading video files needs PyAV: pip install -e './recipes[video]'") from None
    return av


def _decoding_errors() -> tuple[type[Exception], ...]:
    """PyAV's error class where PyAV is installed (its errors are not all OSErrors)."""
    try:
        import av
    except ImportError:
        return ()
    return (av.FFmpegError,)


def video_length(path: Path) -> int:
    """Frames in a video file's first video stream (from its header, or counted by decoding
    where the container does not say)."""
    with _pyav().open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for _ in container.decode(stream))


def video_frames(path: Path, indices: list[int]) -> list[torch.Tensor]:
    """Frames ``indices`` (ascending) of a video file as uint8 ``[3 h w]``, decoded in order up
    to the last one."""
    wanted, frames = set(indices), {}
    with _pyav().open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames[index] = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
            if index >= indices[-1]:
                break
    if len(frames) < len(wanted):
        raise ValueError(f"{path} ended after {index + 1} frames, needed frame {indices[-1]}")
    return [frames[index] for index in indices]


class ClipFolder(Dataset):
    """``root/<clip>``: each sub-folder a clip whose image files (sorted by name) are its frames,
    and each video file (``.mp4``, ``.avi``, ``.mkv``, ``.webm``, ``.mov``; PyAV) a clip. Every
    frame of a sample shares one crop box and flip (``crop``'s draw for the sample's seed); a clip
    with an unreadable frame is replaced by the next clip and counted. ``max_clips`` keeps the
    first clips (by name) only.

    Raises ``ValueError`` naming the clip when a clip has fewer frames than ``sampling`` needs,
    or (``verify``) when a frame cannot be read or differs in size from the clip's first (for
    video files: when the file does not open or decode).
    """

    def __init__(self, root: str | Path, *, sampling: FrameSampling, crop: TrainCrop | CentreCrop,
                 verify: bool = True, max_clips: int | None = None) -> None:
        root = Path(root)
        clips = sorted(path for path in root.iterdir()
                       if path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES)[:max_clips]
        if not clips:
            raise ValueError(f"{root} holds no clip (expected {root}/<clip>/<frames> or video "
                             f"files)")
        self.clips: list[tuple[Path, list[Path] | int]] = []
        for clip in clips:
            frames = frame_files(clip) if clip.is_dir() else self._length(clip)
            length = len(frames) if isinstance(frames, list) else frames
            if length < sampling.span:
                raise ValueError(
                    f"clip {clip} has {length} frames, fewer than the {sampling.num_frames} "
                    f"frames x stride {sampling.stride} = {sampling.span} the sampler needs")
            if verify and isinstance(frames, list):
                _verify_frames(clip, frames)
            self.clips.append((clip, frames))
        self.sampling = sampling
        self.crop = crop
        self._warned: set[Path] = set()

    @staticmethod
    def _length(video: Path) -> int:
        av = _pyav()
        try:
            return video_length(video)
        except (OSError, IndexError, av.FFmpegError) as error:  # IndexError: no video stream
            raise ValueError(f"clip {video} is unreadable ({error})") from None

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        index, seed = item
        for skipped in range(_MAX_SUBSTITUTES):
            clip, frames = self.clips[(index + skipped) % len(self)]
            length = len(frames) if isinstance(frames, list) else frames
            chosen = self.sampling.indices(length, seed)
            try:
                if isinstance(frames, list):
                    pixels = [self.crop.from_file(frames[i], seed, to_rgb) for i in chosen]
                else:
                    pixels = [self.crop.from_pixels(frame, seed)
                              for frame in video_frames(clip, chosen)]
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                    *_decoding_errors()) as error:
                if clip not in self._warned:
                    self._warned.add(clip)
                    log.warning("skipping clip %s with an unreadable frame (%s)", clip, error)
                continue
            return Sample(torch.stack(pixels), 0, skipped > 0)
        raise RuntimeError(f"{_MAX_SUBSTITUTES} consecutive clips with unreadable frames from "
                           f"{self.clips[index][0]} on; is the dataset intact?")


def _verify_frames(clip: Path, frames: list[Path]) -> None:
    """Every frame opens as an image of the clip's first frame's size (headers only)."""
    size = None
    for path in frames:
        try:
            with Image.open(path) as image:
                frame_size = image.size
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:
            raise ValueError(f"clip {clip}: frame {path.name} is unreadable ({error})") from None
        if size is not None and frame_size != size:
            raise ValueError(f"clip {clip}: frame {path.name} is {frame_size[0]}x{frame_size[1]} "
                             f"(w x h), the clip's first frame {size[0]}x{size[1]}")
        size = frame_size
