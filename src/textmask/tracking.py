"""Tracking: the objects of a video's masks, with ids that persist from frame to frame.

:func:`track` (and its stateful form :class:`Tracker`, for a stream of chunks) turns one prompt's masks
``[T, H, W]`` into T :class:`~textmask.components.Instances` whose ``ids`` name the same object in every frame.

Per frame:

1. **Detections**: the 8-connected components of ``mask > threshold`` (specks dropped), as
   :func:`textmask.instances` finds them.
2. **Prediction**: each live track's last mask, shifted by its constant-velocity motion (an exponential average
   of its centroid's steps) times the frames since it was last seen.
3. **Splitting merged blobs**: objects that touch or overlap make one component in a single prompt's mask. A
   component claimed by several predictions (each covers it by ``claim`` of its own area), and large enough to
   hold them (``merge_ratio`` of their summed areas; less means one hides the other), is split: each pixel goes
   to the prediction it lies deepest in (signed distance to each predicted mask). With ``images``, a pixel
   within ``colour_reach`` of several predictions goes instead to the object whose colours it is nearest to
   (each object's colours as last seen alone; distances averaged over a 15 px window): the object in front
   keeps its whole shape, and one that comes out from behind it is told apart. A cut piece's centroid moves with
   the cut, so an object's velocity is held while it is a piece of a shared blob.
4. **Matching**: the IoU of every prediction with every detection (for a track lost a while, also a score from
   the distance of the centroids, so that an object that passed behind another is found again), times an
   appearance term (mean colour) when ``images`` are given; solved as an assignment
   (``scipy.optimize.linear_sum_assignment``). A leftover piece mostly inside a matched prediction (the object
   broke in two) joins that object.
5. **Bookkeeping**: unmatched detections start new tracks (new ids, counting from 1); unmatched tracks are kept
   for ``window`` frames and come back under their id if matched again within it.
6. **Looking back** (``retro``): when an object comes out of a blob that a track held (a new track born from
   it), the earlier frames' blob is split between the two as well, each with its mask of that frame moved back
   along its motion, for as long as both claim the blob: two objects that touched from their first frame get
   their own ids from it. The split is done once the new object's motion is known (``settle`` frames), and
   reaches back up to ``retro`` frames: :meth:`Tracker.update` gives its frames out ``retro`` frames late, and
   :meth:`Tracker.finish` the rest.
7. **Appearance split** (``appearance_split``, off by default; with ``images`` and ``retro``): two objects that
   share one blob in every frame are never seen apart, so steps 3 and 6 cannot act. A matched blob that no
   other track claims is clustered in two by colour (two-means of the frame's local mean colours); when both
   parts are large, each mostly one piece after an opening, their colours well apart, the same two parts hold
   ``appearance_split`` frames (with at most 2 missed between) and the parts move against each other (their
   median whole-pixel steps, found by matching each part's colours with the frame before, differ by at least
   0.5 px per frame: one object of two colours moves as one), the smaller part becomes a new object, its pixels
   its own in the frames where the parts held, and further back by position where the blob holds both.

Everything is sequential in time, so a video tracked chunk by chunk (:class:`Tracker`, then ``finish()``) gives
exactly what the same video tracked in one piece gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .components import Instances
from .errors import InputError

__all__ = ["DEFAULT_RETRO", "DEFAULT_WINDOW", "Tracker", "describe_tracks", "track", "track_ids", "track_masks"]

DEFAULT_RETRO = 30  # frames given out late, so that a blob's split can reach back to them
DEFAULT_WINDOW = 30  # frames a lost track waits to be found again (~1 s of video)
_PALETTE = 256  # colours kept per object
_TEXTURE_WINDOW = 15  # px: colour distances are compared over windows this wide
_COLOUR_RATIO = 0.5  # colours decide a pixel where the nearest object is at most this fraction of the next
DEFAULT_COLOUR_REACH = 0.3  # × an object's size (√area): how far from its prediction its colours are looked for
DEFAULT_APPEARANCE_SPLIT = 0  # off: frames a blob's two colour parts must hold before it is split (5 tried)
_PART_SHARE = 0.25  # each colour part at least this share of the blob
_PART_SEPARATION = 4.0  # the parts' colours: squared distance of the centres ≥ this × the mean spread
_PART_WHOLE = 0.7  # each part mostly one piece: its largest component (after an opening) ≥ this share of it
_PART_DRIFT = 0.5  # px per frame: the parts move against each other at least this fast (median steps)
_PART_REACH = 8  # px: the parts' steps are looked for this far around the track's own step
_PART_GAP = 3  # frames: the parts may be missed in up to this - 1 frames between two that hold
_PART_SAMPLE = 1500  # pixels the colour clustering is fitted on
DEFAULT_MIN_FRACTION = 1e-3  # components under 0.1 % of the frame are noise, not objects to track


@dataclass
class _Track:
    """One object: its last mask (a crop at ``(top, left)``), motion, colour and when it was last seen."""

    id: int
    crop: np.ndarray  # bool [h, w]
    top: int
    left: int
    cy: float
    cx: float
    area: int
    last: int
    vy: float = 0.0
    vx: float = 0.0
    hits: int = 1
    colour: np.ndarray | None = None
    palette: np.ndarray | None = None  # float32 [n, 3]: colours of its pixels when last seen alone
    # recent frames whose blob fell in the same two colour parts: (frame, part fraction, colour centres [2, 3],
    # the parts' steps from the frame before [2, 2] (dy, dx), NaN when unknown, and the second part: a bool
    # crop at (top, left))
    parts: list[tuple[int, float, np.ndarray, np.ndarray, tuple[np.ndarray, int, int]]] = field(default_factory=list)
    part_motion: np.ndarray | None = None  # [2, 2]: the two parts' velocities (vy, vx) when the blob is split
    part_frames: list[tuple[int, np.ndarray, int, int]] = field(default_factory=list)  # the new part's earlier
    # masks (frame, bool crop, top, left) when the blob is split


@dataclass
class _Frame:
    """Working data of one frame: component labels (0: none) and per-component statistics."""

    labels: np.ndarray  # int32 [H, W]
    areas: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))


@dataclass
class _Pending:
    """A frame tracked but not given out yet: its mask, component labels and ``(id, label)`` objects."""

    t: int
    mask: np.ndarray
    labels: np.ndarray
    objects: list[tuple[int, int]]
    device: torch.device


def _as_masks(masks: Any, name: str = "masks") -> torch.Tensor:
    if not isinstance(masks, torch.Tensor):
        try:
            masks = torch.as_tensor(np.asarray(masks))
        except (TypeError, ValueError):
            raise InputError(f"{name}: expected a [T, H, W] tensor or array, got {type(masks).__name__}") from None
    if masks.dim() != 3:
        raise InputError(f"{name}: expected [T, H, W] (one prompt's masks of T frames), got shape {list(masks.shape)}")
    if masks.dtype == torch.uint8:
        return masks.float() / 255.0
    if masks.dtype == torch.bool:
        return masks.float()
    if not masks.is_floating_point():
        raise InputError(f"{name}: expected float in [0, 1], uint8 or bool, got {masks.dtype}")
    return masks.float()


def as_frames(images: Any, count: int, size: tuple[int, int], name: str = "images") -> torch.Tensor:
    """``images`` ``[T, H, W, C]`` (float in [0, 1], uint8; C = 1, 3 or 4) checked against the masks' frame count
    and size → ``[T, H, W, 3]`` uint8 on the CPU."""
    from .images import frames_to_levels

    levels = frames_to_levels(images, name)
    if levels.shape[0] != count:
        raise InputError(f"{name}: {levels.shape[0]} frames for {count} masks; give one image per mask")
    if tuple(levels.shape[2:]) != tuple(size):
        raise InputError(f"{name}: frames of {list(levels.shape[2:])} for masks of {list(size)}; sizes must match")
    return levels.cpu().permute(0, 2, 3, 1).contiguous()


def _two_colours(colours: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Two-means of ``colours`` ``[n, 3]`` (fitted on an even subsample): the centres ``[2, 3]`` and each colour's
    part (bool ``[n]``, True: the second), or None when the two are not well apart (the squared distance of the
    centres under ``_PART_SEPARATION`` × the mean squared distance of the colours to their centre)."""
    sample = colours[:: max(1, len(colours) // _PART_SAMPLE)].astype(np.float64)
    first = sample[np.argmax(((sample - sample.mean(0)) ** 2).sum(1))]
    centres = np.stack([first, sample[np.argmax(((sample - first) ** 2).sum(1))]])
    for _ in range(10):
        side = ((sample - centres[1]) ** 2).sum(1) < ((sample - centres[0]) ** 2).sum(1)
        if side.all() or not side.any():
            return None
        new = np.stack([sample[~side].mean(0), sample[side].mean(0)])
        if np.allclose(new, centres, atol=1e-4):
            break
        centres = new
    distances = ((colours[:, None, :] - centres[None].astype(np.float32)) ** 2).sum(-1)
    side = distances[:, 1] < distances[:, 0]
    if ((centres[0] - centres[1]) ** 2).sum() < _PART_SEPARATION * float(distances.min(1).mean()):
        return None
    return centres, side


def _step_of(
    before: np.ndarray, now: np.ndarray, ys: np.ndarray, xs: np.ndarray, centre: tuple[int, int]
) -> np.ndarray:
    """The whole-pixel step ``(dy, dx)`` (within ``_PART_REACH`` of ``centre``) that best brings the colours
    ``before`` ``[H, W, 3]`` at ``(ys - dy, xs - dx)`` onto ``now`` at ``(ys, xs)`` (a subsample of them)."""
    keep = slice(None, None, max(1, len(ys) // 400))
    ys, xs = ys[keep], xs[keep]
    height, width = now.shape[:2]
    reach = np.arange(-_PART_REACH, _PART_REACH + 1)
    dy = (centre[0] + reach)[:, None].repeat(len(reach), 1).ravel()
    dx = (centre[1] + reach)[None, :].repeat(len(reach), 0).ravel()
    yy = np.clip(ys[None] - dy[:, None], 0, height - 1)
    xx = np.clip(xs[None] - dx[:, None], 0, width - 1)
    cost = ((before[yy, xx] - now[ys, xs][None]) ** 2).sum((1, 2))
    best = int(np.argmin(cost))
    return np.array([dy[best], dx[best]], dtype=np.float64)


def _shifted(track: _Track, gap: int, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """The track's predicted crop and its top-left ``(top, left)`` after ``gap`` frames at constant velocity,
    kept overlapping the frame by at least one pixel (an object that left is looked for at the border)."""
    h, w = track.crop.shape
    top = round(track.top + track.vy * gap)
    left = round(track.left + track.vx * gap)
    top = min(max(top, 1 - h), height - 1)
    left = min(max(left, 1 - w), width - 1)
    return track.crop, top, left


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance to a bool mask ``[h, w]``, negative inside it (deeper is more negative): a blob's
    pixel goes to the predicted object it lies deepest in."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)


def _window(top: int, left: int, h: int, w: int, height: int, width: int) -> tuple[slice, slice, slice, slice]:
    """Slices of the frame and of a crop for the part of an ``h × w`` crop at ``(top, left)`` inside the frame."""
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, height), min(left + w, width)
    return (
        slice(y0, max(y0, y1)),
        slice(x0, max(x0, x1)),
        slice(y0 - top, max(y0, y1) - top),
        slice(x0 - left, max(x0, x1) - left),
    )


class Tracker:
    """Track one prompt's objects over a video given chunk by chunk (see the module docstring).

    Args:
        threshold: object pixels are ``mask > threshold``; in [0, 1).
        min_area: components with fewer pixels are not objects.
        min_fraction: nor are those under this fraction of the frame (the larger limit applies).
        window: frames a lost track is kept; found again within them, it keeps its id.
        claim: a prediction claims a component that covers this fraction of its own area.
        merge_ratio: a component claimed by several predictions is split when its area is at least this
            fraction of their summed areas (less: one object hides the other; the one left out waits).
        momentum: weight of the old velocity in the velocity average (0: the last step only).
        min_score: the least matching score (IoU, or the distance score of a lost track) that links a
            detection to a track.
        appearance: with images, the width (RGB in [0, 1]) of the colour term that multiplies the score;
            None ignores the images.
        fragment: an unmatched piece smaller than this fraction of the detection a track matched, lying mostly
            inside the track's prediction, joins that detection; a larger one is a new object.
        motion: predict with constant velocity (False: where the object was last seen).
        split: split blobs claimed by several tracks (False: a blob is one object).
        colour_reach: with images, how far (× an object's size, √area) from its predicted mask a blob's pixels
            are given by colour rather than by position; None: by position only.
        retro: frames a split may reach back (the frames :meth:`update` holds back); 0: none, every frame is
            given out at once.
        settle: frames a new object is followed before the split reaches back (to know its motion).
        appearance_split: with images, frames in a row a track's blob must fall in the same two parts of unlike
            colours (each large and in one piece, moving against each other) before it is split in two objects,
            the second one given its own id back to where the split held (with ``retro``); 0 (the default):
            never. 5 lifts IDF1 where two objects share a blob in every frame (see docs/video.md), but a split
            of parts that do not follow the objects costs elsewhere, so it is off unless asked for.

    Call :meth:`update` with consecutive chunks, then :meth:`finish`; the results equal :func:`track` of the
    whole video.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        min_area: int = 0,
        min_fraction: float = DEFAULT_MIN_FRACTION,
        window: int = DEFAULT_WINDOW,
        claim: float = 0.3,
        merge_ratio: float = 0.7,
        momentum: float = 0.5,
        min_score: float = 0.1,
        appearance: float | None = 0.25,
        fragment: float = 0.3,
        motion: bool = True,
        split: bool = True,
        colour_reach: float | None = DEFAULT_COLOUR_REACH,
        appearance_split: int = DEFAULT_APPEARANCE_SPLIT,
        retro: int = DEFAULT_RETRO,
        settle: int = 3,
    ) -> None:
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"threshold: must be in [0, 1), got {threshold}")
        if int(min_area) < 0 or not 0.0 <= float(min_fraction) <= 1.0:
            raise ValueError(
                f"min_area / min_fraction: must be ≥ 0 pixels and in [0, 1], got {min_area}, {min_fraction}"
            )
        if int(window) < 0:
            raise ValueError(f"window: must be ≥ 0 frames, got {window}")
        for name, value in (("claim", claim), ("merge_ratio", merge_ratio), ("momentum", momentum)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {value}")
        if not 0.0 < float(min_score) <= 1.0:
            raise ValueError(f"min_score: must be in (0, 1], got {min_score}")
        if appearance is not None and not float(appearance) > 0:
            raise ValueError(f"appearance: must be > 0 (or None: ignore the images), got {appearance}")
        self.threshold, self.min_area, self.min_fraction = float(threshold), int(min_area), float(min_fraction)
        self.window, self.claim, self.merge_ratio = int(window), float(claim), float(merge_ratio)
        self.momentum, self.min_score = float(momentum), float(min_score)
        self.appearance = None if appearance is None else float(appearance)
        self.motion, self.split, self.fragment = bool(motion), bool(split), float(fragment)
        if colour_reach is not None and not float(colour_reach) > 0:
            raise ValueError(f"colour_reach: must be > 0 (or None: split blobs by position only), got {colour_reach}")
        self.colour_reach = None if colour_reach is None else float(colour_reach)
        self._cut: set[int] = set()  # this frame's labels cut from a shared blob
        if int(retro) < 0 or int(settle) < 1:
            raise ValueError(f"retro / settle: must be ≥ 0 and ≥ 1 frames, got {retro}, {settle}")
        self.retro, self.settle = int(retro), int(settle)
        self._pending: list[_Pending] = []  # frames not given out yet (the last ``retro``)
        self._births: list[tuple[int, _Track, _Track]] = []  # (frame, new track, the track it came out of)
        self._parts: set[int] = set()  # ids of tracks split from a blob by its colours (the appearance split)
        self.frame = 0  # frames seen so far
        self.size: tuple[int, int] | None = None
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._grid: tuple[np.ndarray, np.ndarray] | None = None  # pixel rows and columns, flattened
        self._smooth: np.ndarray | None = None  # this frame's local mean colours [H, W, 3], with images
        self._last_smooth: np.ndarray | None = None  # the frame before's
        if int(appearance_split) < 0:
            raise ValueError(f"appearance_split: must be ≥ 0 frames (0: never), got {appearance_split}")
        self.appearance_split = int(appearance_split)

    @property
    def live_ids(self) -> list[int]:
        """Ids of the tracks still kept (seen within ``window`` frames), in id order."""
        return sorted(t.id for t in self._tracks)

    def update(self, masks: Any, images: Any = None) -> list[Instances]:
        """Track the next frames; give out those no later split can change any more (all but the last
        ``retro`` frames seen so far, in order).

        Args:
            masks: ``[B, H, W]`` float in [0, 1] (uint8 read as /255, bool as 0/1): one prompt's masks of the
                frames that follow the previous call's.
            images: optional ``[B, H, W, C]`` frames (float in [0, 1] or uint8) for the appearance term.

        Returns:
            :class:`~textmask.components.Instances` (on the masks' device) of the frames given out now (B of
            them when ``retro`` is 0), objects in id order, with ``ids`` ``[K]`` int64.
        """
        masks = _as_masks(masks)
        count, height, width = masks.shape
        if self.size is None:
            self.size = (height, width)
        elif self.size != (height, width):
            raise InputError(
                f"masks: frames of {[height, width]} after frames of {list(self.size)}; one size per video"
            )
        frames = None
        if images is not None and self.appearance is not None:
            frames = as_frames(images, count, (height, width)).numpy()
        values = masks.detach().cpu().numpy()
        found = []
        for index in range(count):
            found += self._step(values[index], None if frames is None else frames[index], masks.device)
        return found

    # --------------------------------------------------------------------------------------------- steps
    def _step(self, mask: np.ndarray, image: np.ndarray | None, device: torch.device) -> list[Instances]:
        from scipy import ndimage
        from scipy.optimize import linear_sum_assignment

        height, width = mask.shape
        t = self.frame
        self.frame += 1
        self._tracks = [tr for tr in self._tracks if t - tr.last <= self.window]

        smooth = None
        self._cut = set()
        if image is not None and self.colour_reach is not None:
            smooth = ndimage.uniform_filter(image[..., :3].astype(np.float32) / 255.0, size=(5, 5, 1))
        self._last_smooth, self._smooth = self._smooth, smooth
        structure = np.ones((3, 3), dtype=bool)
        labels, count = ndimage.label(mask > self.threshold, structure=structure)
        smallest = max(self.min_area, math.ceil(self.min_fraction * height * width), 1)
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        small = areas < smallest
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
        live = [tr for tr in self._tracks]
        predictions = [_shifted(tr, t - tr.last, height, width) for tr in live]

        overlap = self._overlaps(labels, count, predictions)
        if self.split:
            labels, count = self._split(labels, count, predictions, overlap, smallest, live, smooth)
            overlap = self._overlaps(labels, count, predictions)
        areas = np.bincount(labels.ravel(), minlength=count + 1).astype(np.int64)
        present = np.flatnonzero(areas[1:] > 0) + 1  # components left after dropping specks

        stats = self._stats(labels, count, image)
        scores = self._scores(live, predictions, overlap, areas, present, stats, t)
        matched: dict[int, int] = {}  # component label → index in live
        if scores.size:
            rows, cols = linear_sum_assignment(-scores)
            for r, c in zip(rows, cols):
                if scores[r, c] >= self.min_score:
                    matched[int(present[c])] = int(r)
        # Fragments: a small unmatched piece lying mostly inside a matched track's prediction joins it (the
        # object broke up); a large one is another object coming apart from it, and starts its own track.
        owner_of = {k: label for label, k in matched.items()}
        for label in present:
            if int(label) in matched or not len(live):
                continue
            k = int(np.argmax(overlap[:, label]))
            small = k in owner_of and areas[label] < self.fragment * areas[owner_of[k]]
            if small and overlap[k, label] >= 0.5 * areas[label]:
                labels[labels == label] = owner_of[k]
                areas[owner_of[k]] += areas[label]
                areas[label] = 0
        born_here: dict[int, tuple[_Track, int]] = {}  # part label → the track whose blob it was split from, its label
        if self.appearance_split and smooth is not None and self.retro:
            for label, k in sorted(matched.items()):
                if label in self._cut or areas[label] == 0:
                    continue
                part = self._two_parts(live[k], labels, label, smooth, t)
                if part is not None:
                    count += 1
                    labels[part] = count
                    areas = np.bincount(labels.ravel(), minlength=count + 1).astype(np.int64)
                    born_here[count] = (live[k], label)
                    present = np.append(present, count)
                    self._cut.update((label, count))
        if born_here or any(areas[label] == 0 for label in present):
            stats = self._stats(labels, count, image)
        objects: list[tuple[int, int]] = []  # (id, component label)
        for label in present:
            label = int(label)
            if areas[label] == 0:
                continue
            if label in matched:
                tr = live[matched[label]]
                self._observe(tr, labels, label, stats, t)
            else:
                tr = self._start(labels, label, stats, t)
                if label in born_here:  # a colour part of a track's blob: both are objects from now on
                    self._part_birth(tr, *born_here[label], stats, t)
                    objects.append((tr.id, label))
                    continue
                k = int(np.argmax(overlap[:, label])) if len(live) else -1
                if self.retro and k in owner_of and overlap[k, label] >= 0.5 * areas[label]:
                    self._births.append((t, tr, live[k]))  # came out of a blob that track k held
            objects.append((tr.id, label))
        objects.sort()
        if labels.size and labels.max() < np.iinfo(np.uint16).max - len(self._tracks) - 1:
            labels = labels.astype(np.uint16)  # held up to `retro` frames: half the memory
        self._pending.append(_Pending(t, mask, labels, objects, device))
        self._retro_split(t)
        return self._emit(self.retro)

    # ------------------------------------------------------------------------------------- retro split
    def _retro_split(self, t: int) -> None:
        """Births ``settle`` frames old (their motion known): split the earlier frames' blob their parent held
        between the two, each with its mask of the birth frame moved back along its motion, for as long as
        both claim the blob."""
        settle = min(self.settle, self.retro)
        keep = []
        for born, child, parent in self._births:
            if t - born < settle:
                keep.append((born, child, parent))
                continue
            self._split_back(born, child, parent)
        self._births = keep

    def _split_back(self, born: int, child: _Track, parent: _Track) -> None:

        frames = {p.t: p for p in self._pending}
        if born not in frames:
            return
        at = frames[born]
        masks = {}
        for tr in (child, parent):
            labels = [label for i, label in at.objects if i == tr.id]
            if not labels:
                return
            masks[tr.id] = at.labels == labels[0]
        height, width = at.labels.shape
        for s in range(born - 1, born - 1 - self.retro, -1):
            if s not in frames:
                break
            item = frames[s]
            held = [label for i, label in item.objects if i == parent.id]
            if not held or any(i == child.id for i, _ in item.objects):
                break
            member = item.labels == held[0]
            if child.id in self._parts and member.sum() < self.merge_ratio * sum(int(m.sum()) for m in masks.values()):
                return  # a colour part: only where the blob is large enough for both (not one object of two colours)
            depth = []
            for tr in (parent, child):
                dy, dx = round(tr.vy * (s - born)), round(tr.vx * (s - born))
                moved = np.zeros((height, width), dtype=bool)
                fy, fx, cy, cx = _window(dy, dx, height, width, height, width)
                moved[fy, fx] = masks[tr.id][cy, cx]
                inside = (moved & member).sum()
                if inside < self.claim * max(int(moved.sum()), 1):
                    return  # this one does not claim the blob any more: they were apart, or one hid
                depth.append(_signed_distance(moved))
            piece = member & (depth[1] < depth[0])
            if piece.sum() < 1 or (member & ~piece).sum() < 1:
                return
            label = int(item.labels.max()) + 1
            item.labels[piece] = label
            item.objects = sorted([*item.objects, (child.id, label)])

    def _emit(self, keep: int) -> list[Instances]:
        """Instances of the pending frames but the last ``keep`` (which a later retro split may still change)."""
        out = []
        while len(self._pending) > keep:
            item = self._pending.pop(0)
            out.append(self._instances(item.mask, item.labels, item.objects, item.device))
        return out

    def finish(self) -> list[Instances]:
        """The frames still held back (with ``retro``: the last ``retro`` frames); call after the last
        :meth:`update`. Without ``retro``, ``[]``."""
        for born, child, parent in self._births:
            self._split_back(born, child, parent)
        self._births = []
        return self._emit(0)

    def _overlaps(self, labels: np.ndarray, count: int, predictions: list[tuple[np.ndarray, int, int]]) -> np.ndarray:
        """``[N, count + 1]`` pixels of each prediction on each component (column 0: outside every component)."""
        height, width = labels.shape
        overlap = np.zeros((len(predictions), count + 1), dtype=np.int64)
        for k, (crop, top, left) in enumerate(predictions):
            fy, fx, cy, cx = _window(top, left, *crop.shape, height, width)
            inside = labels[fy, fx][crop[cy, cx]]
            overlap[k] = np.bincount(inside, minlength=count + 1)[: count + 1]
        return overlap

    def _split(
        self,
        labels: np.ndarray,
        count: int,
        predictions: list[tuple[np.ndarray, int, int]],
        overlap: np.ndarray,
        smallest: int,
        live: list[_Track] | None = None,
        smooth: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """Split components claimed by several predictions (see the module docstring); returns new labels."""
        from scipy import ndimage

        if len(predictions) < 2 or count == 0:
            return labels, count
        height, width = labels.shape
        predicted_area = np.array([crop[_window(t, lf, *crop.shape, height, width)[2:]].sum() for crop, t, lf in
                                   predictions], dtype=np.float64)  # fmt: skip
        claims = overlap[:, 1:] >= self.claim * np.maximum(predicted_area[:, None], 1)
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        boxes = ndimage.find_objects(labels, max_label=count)
        for c in np.flatnonzero(claims.sum(0) >= 2):
            label = int(c) + 1
            claimants = np.flatnonzero(claims[:, c])
            if areas[label] < self.merge_ratio * predicted_area[claimants].sum() or boxes[c] is None:
                continue
            ys, xs = boxes[c]
            pad = 2
            y0, y1 = max(ys.start - pad, 0), min(ys.stop + pad, height)
            x0, x1 = max(xs.start - pad, 0), min(xs.stop + pad, width)
            region = labels[y0:y1, x0:x1]
            member = region == label
            depth = np.empty((len(claimants), *member.shape), dtype=np.float32)
            textured = smooth is not None and live is not None and self.colour_reach is not None
            if textured:
                unlike = np.full((len(claimants), *member.shape), np.inf, dtype=np.float32)
            for i, k in enumerate(claimants):
                crop, top, left = predictions[k]
                canvas = np.zeros(member.shape, dtype=bool)
                fy, fx, cy, cx = _window(top - y0, left - x0, *crop.shape, *member.shape)
                canvas[fy, fx] = crop[cy, cx]
                if not canvas.any():  # the prediction lies outside this box: far from every pixel
                    depth[i] = np.float32(1e6)
                    continue
                depth[i] = _signed_distance(canvas)
                palette = live[k].palette if textured else None
                if palette is not None:
                    # near its prediction: how far each pixel's colour is from the nearest colour the object had
                    # when last seen alone
                    near = member & (depth[i] < self.colour_reach * math.sqrt(predicted_area[k]))
                    here = smooth[y0:y1, x0:x1][near]
                    d2 = ((here[:, None, :] - palette[None, :, :]) ** 2).sum(-1).min(1)
                    unlike[i][near] = d2
            nearest = np.argmin(depth, axis=0)
            if textured:
                # where several objects may be, the pixel goes to the one whose colours it has (the object in
                # front is seen there, not the one it hides; one that comes out from behind is told apart)
                shared = np.isfinite(unlike).sum(0) >= 2
                # pixel colours are noisy: compare the mean distances over a window (of the pixels where each
                # object is looked for)
                valid = np.isfinite(unlike)
                window = (1, _TEXTURE_WINDOW, _TEXTURE_WINDOW)
                total = ndimage.uniform_filter(np.where(valid, unlike, 0.0), size=window)
                weight = ndimage.uniform_filter(valid.astype(np.float32), size=window)
                mean = np.where(valid, total / np.maximum(weight, 1e-6), np.inf)
                best = np.argmin(mean, axis=0)
                # only where the colours decide: the nearest object clearly nearer than the next (objects of
                # like colours are split by position)
                ranked = np.sort(mean, axis=0)
                clear = ranked[0] < _COLOUR_RATIO * ranked[1]
                pick = shared & clear
                nearest[pick] = best[pick]
            pieces = []
            for i in range(1, len(claimants)):
                piece = member & (nearest == i)
                if piece.sum() >= smallest:
                    pieces.append(piece)
            self._cut.add(label)
            for piece in pieces:  # piece 0 keeps the component's label
                count += 1
                region[piece] = count
                self._cut.add(count)
        return labels, count

    def _stats(self, labels: np.ndarray, count: int, image: np.ndarray | None) -> dict[str, np.ndarray]:
        """Per component: area, centroid ``(cy, cx)`` and mean colour (RGB in [0, 1]) when there is an image."""
        flat = labels.ravel()
        height, width = labels.shape
        areas = np.bincount(flat, minlength=count + 1).astype(np.float64)
        if self._grid is None or self._grid[0].size != height * width:
            self._grid = tuple(v.astype(np.float64) for v in np.divmod(np.arange(height * width), width))
        ys, xs = self._grid
        safe = np.maximum(areas, 1)
        stats = {
            "area": areas,
            "cy": np.bincount(flat, weights=ys, minlength=count + 1) / safe,
            "cx": np.bincount(flat, weights=xs, minlength=count + 1) / safe,
        }
        if image is not None:
            colour = image.reshape(-1, image.shape[-1])[:, :3].astype(np.float64) / 255.0
            stats["colour"] = np.stack(
                [np.bincount(flat, weights=colour[:, i], minlength=count + 1) / safe for i in range(3)], 1
            )
        return stats

    def _scores(
        self,
        live: list[_Track],
        predictions: list[tuple[np.ndarray, int, int]],
        overlap: np.ndarray,
        areas: np.ndarray,
        present: np.ndarray,
        stats: dict[str, np.ndarray],
        t: int,
    ) -> np.ndarray:
        """``[N, D]`` matching scores of live tracks against present components."""
        if not live or not len(present):
            return np.zeros((len(live), len(present)))
        height, width = self.size or (0, 0)
        predicted_area = np.array(
            [crop[_window(top, left, *crop.shape, height, width)[2:]].sum() for crop, top, left in predictions],
            dtype=np.float64,
        )
        inter = overlap[:, present].astype(np.float64)
        union = predicted_area[:, None] + areas[present][None, :] - inter
        scores = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        gaps = np.array([t - tr.last for tr in live], dtype=np.float64)
        # Lost tracks: also a score from the predicted centroid's distance, for objects that reappear off the
        # predicted mask (an occluder's far side, a change of speed); scaled by size likeness.
        lost = gaps > 1
        if lost.any():
            py = np.array([tr.cy + tr.vy * g for tr, g in zip(live, gaps)])
            px = np.array([tr.cx + tr.vx * g for tr, g in zip(live, gaps)])
            size = np.sqrt(np.array([tr.area for tr in live], dtype=np.float64))
            sigma = 0.5 * size * (1.0 + 0.05 * gaps)
            distance2 = (py[:, None] - stats["cy"][present][None]) ** 2 + (
                px[:, None] - stats["cx"][present][None]
            ) ** 2
            near = np.exp(-distance2 / (2 * sigma[:, None] ** 2))
            track_area = np.array([tr.area for tr in live], dtype=np.float64)[:, None]
            likeness = np.sqrt(
                np.minimum(track_area, areas[present][None]) / np.maximum(track_area, areas[present][None])
            )
            scores = np.where(lost[:, None], np.maximum(scores, 0.5 * near * likeness), scores)
        if "colour" in stats and self.appearance is not None:
            colours = np.stack([tr.colour if tr.colour is not None else np.full(3, np.nan) for tr in live])
            diff2 = ((colours[:, None, :] - stats["colour"][present][None]) ** 2).sum(-1)
            term = np.exp(-diff2 / (2 * self.appearance**2))
            scores = scores * np.where(np.isnan(term), 1.0, term)
        return scores

    def _two_parts(self, tr: _Track, labels: np.ndarray, label: int, smooth: np.ndarray, t: int) -> np.ndarray | None:
        """The appearance split: the smaller of the two colour parts of track ``tr``'s blob (bool ``[H, W]``) once
        they have held ``appearance_split`` frames in a row, moving against each other; else None."""
        from scipy import ndimage

        crop, top, left = self._crop(labels, label)
        h, w = crop.shape
        colours = smooth[top : top + h, left : left + w][crop]
        if tr.parts and t - tr.parts[-1][0] > _PART_GAP:
            tr.parts = []
        found = _two_colours(colours) if len(colours) >= 200 else None
        if found is None:
            return None
        centres, side = found
        share = float(side.mean())
        if min(share, 1.0 - share) < _PART_SHARE:
            return None
        box = np.ones((3, 3), dtype=bool)
        for part in (side, ~side):  # each part mostly one piece (a textured object's colours interleave)
            canvas = np.zeros(crop.shape, dtype=bool)
            canvas[crop] = part
            pieces, n = ndimage.label(ndimage.binary_opening(canvas, structure=box), structure=box)
            if n == 0 or np.bincount(pieces.ravel())[1:].max() < _PART_WHOLE * part.sum():
                return None
        if tr.parts:
            _, last_share, last_centres, _, _ = tr.parts[-1]
            if ((centres[::-1] - last_centres) ** 2).sum() < ((centres - last_centres) ** 2).sum():
                centres, side, share = centres[::-1], ~side, 1.0 - share
            gap = float(((centres[0] - centres[1]) ** 2).sum())
            moved = ((centres - last_centres) ** 2).sum(1).max()
            if moved > 0.25 * gap or abs(share - last_share) > 0.15:  # not the same two parts
                tr.parts = []
        ys, xs = np.nonzero(crop)
        steps = np.full((2, 2), np.nan)
        if self._last_smooth is not None and self._last_smooth.shape == smooth.shape:
            centre = (round(tr.vy), round(tr.vx))
            for i, part in enumerate((~side, side)):
                steps[i] = _step_of(self._last_smooth, smooth, ys[part] + top, xs[part] + left, centre)
        second = np.zeros(crop.shape, dtype=bool)
        second[crop] = side
        tr.parts = [*tr.parts[-self.retro :], (t, share, centres, steps, (second, top, left))]
        if len(tr.parts) < self.appearance_split:
            return None
        known = np.stack([p[3] for p in tr.parts])
        known = known[np.isfinite(known).all((1, 2))]
        if len(known) < self.appearance_split - 1:
            return None
        motion = np.median(known, axis=0)  # [2 parts, (dy, dx)] (medians: a step may be found wrong)
        if float(np.sqrt((np.median(known[:, 1] - known[:, 0], axis=0) ** 2).sum())) < _PART_DRIFT:
            return None  # the parts move as one: one object of two colours (or two that move as one)
        child = 1 if share <= 0.5 else 0  # the smaller part is the new object
        tr.part_motion = motion[[1 - child, child]]
        tr.part_frames = [(p[0], p[4][0] if child == 1 else ~p[4][0], p[4][1], p[4][2]) for p in tr.parts[:-1]]
        tr.parts = []
        out = np.zeros(labels.shape, dtype=bool)
        out[top : top + h, left : left + w][crop] = side if child == 1 else ~side
        return out

    def _part_birth(
        self, child: _Track, parent: _Track, parent_label: int, stats: dict[str, np.ndarray], t: int
    ) -> None:
        """A blob split by :meth:`_two_parts`: each part gets its motion and colours; the split reaches back."""
        if parent.part_motion is not None:
            (parent.vy, parent.vx), (child.vy, child.vx) = parent.part_motion
            parent.part_motion = None
        child.hits = 2  # from now on a cut piece: its velocity is held
        parent.palette = self._palette(parent.crop, parent.top, parent.left)
        if "colour" in stats:
            parent.colour = stats["colour"][parent_label].copy()
        # the frames where the parts held: the new part's pixels of each are its own from there on
        pending = {p.t: p for p in self._pending}
        first = t
        for s, mask, top, left in parent.part_frames:
            item = pending.get(s)
            held = [label for i, label in item.objects if i == parent.id] if item is not None else []
            if not held:
                continue
            h, w = mask.shape
            region = item.labels[top : top + h, left : left + w]
            piece = mask & (region == held[0])
            if not piece.any() or piece.sum() == (item.labels == held[0]).sum():
                continue
            label = int(item.labels.max()) + 1
            region[piece] = label
            item.objects = sorted([*item.objects, (child.id, label)])
            first = min(first, s)
        parent.part_frames = []
        self._parts.add(child.id)
        self._births.append((first, child, parent))  # before them, by position where the blob holds both

    def _palette(self, crop: np.ndarray, top: int, left: int) -> np.ndarray | None:
        """Up to ``_PALETTE`` colours of the object's pixels (the frame's local means), evenly drawn."""
        if self._smooth is None:
            return None
        h, w = crop.shape
        colours = self._smooth[top : top + h, left : left + w][crop]
        if not len(colours):
            return None
        step = max(1, len(colours) // _PALETTE)
        return colours[::step].copy()

    def _crop(self, labels: np.ndarray, label: int) -> tuple[np.ndarray, int, int]:
        rows = np.flatnonzero((labels == label).any(1))
        cols = np.flatnonzero((labels == label).any(0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return labels[top:bottom, left:right] == label, int(top), int(left)

    def _start(self, labels: np.ndarray, label: int, stats: dict[str, np.ndarray], t: int) -> _Track:
        crop, top, left = self._crop(labels, label)
        colour = stats["colour"][label].copy() if "colour" in stats else None
        tr = _Track(self._next_id, crop, top, left, stats["cy"][label], stats["cx"][label], int(crop.sum()), t,
                    colour=colour)  # fmt: skip
        tr.palette = self._palette(crop, top, left)
        self._next_id += 1
        self._tracks.append(tr)
        return tr

    def _observe(self, tr: _Track, labels: np.ndarray, label: int, stats: dict[str, np.ndarray], t: int) -> None:
        gap = max(1, t - tr.last)
        cy, cx = float(stats["cy"][label]), float(stats["cx"][label])
        step_y, step_x = (cy - tr.cy) / gap, (cx - tr.cx) / gap
        if label in self._cut and tr.hits > 1 and self._smooth is not None:
            pass  # a piece cut from a shared blob by colour: its centroid moves with the cut, not the object
        elif tr.hits == 1:
            tr.vy, tr.vx = step_y, step_x
        else:
            tr.vy = self.momentum * tr.vy + (1 - self.momentum) * step_y
            tr.vx = self.momentum * tr.vx + (1 - self.momentum) * step_x
        if not self.motion:
            tr.vy = tr.vx = 0.0
        tr.crop, tr.top, tr.left = self._crop(labels, label)
        tr.cy, tr.cx, tr.area, tr.last = cy, cx, int(tr.crop.sum()), t
        if label not in self._cut:
            tr.palette = self._palette(tr.crop, tr.top, tr.left)
        tr.hits += 1
        if "colour" in stats:
            new = stats["colour"][label]
            tr.colour = new.copy() if tr.colour is None else 0.7 * tr.colour + 0.3 * new

    def _instances(
        self, mask: np.ndarray, labels: np.ndarray, objects: list[tuple[int, int]], device: torch.device
    ) -> Instances:
        from scipy import ndimage

        count = len(objects)
        lookup = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int64)
        for k, (_, label) in enumerate(objects):
            lookup[label] = k + 1
        own = lookup[labels]
        areas = np.bincount(own.ravel(), minlength=count + 1)[1:]
        sums = np.bincount(own.ravel(), weights=mask.ravel().astype(np.float64), minlength=count + 1)[1:]
        boxes = np.zeros((count, 4), dtype=np.int64)
        for k, found in enumerate(ndimage.find_objects(own, max_label=count)):
            if found is not None:
                ys, xs = found
                boxes[k] = (xs.start, ys.start, xs.stop, ys.stop)
        members = own[None] == np.arange(1, count + 1).reshape(-1, 1, 1)
        values = np.where(members, mask[None].astype(np.float32), np.float32(0))
        return Instances(
            masks=torch.from_numpy(values).to(device),
            boxes=torch.from_numpy(boxes).to(device),
            scores=torch.from_numpy((sums / np.maximum(areas, 1)).astype(np.float32)).to(device),
            areas=torch.from_numpy(areas.astype(np.int64)).to(device),
            labels=torch.from_numpy(own).to(device),
            ids=torch.tensor([i for i, _ in objects], dtype=torch.int64, device=device),
        )


def track(
    masks: Any,
    images: Any = None,
    threshold: float = 0.5,
    min_area: int = 0,
    **options: Any,
) -> list[Instances]:
    """Objects with persistent ids over a video's masks (one prompt).

    Args:
        masks: ``[T, H, W]`` float in [0, 1] (uint8 read as /255, bool as 0/1), the frames in order.
        images: optional ``[T, H, W, C]`` frames (float in [0, 1] or uint8): their colours help find an object
            again after an occlusion.
        threshold: object pixels are ``mask > threshold``; in [0, 1).
        min_area: objects with fewer pixels are ignored (and those under ``min_fraction`` of the frame,
            0.1 % by default).
        options: the other :class:`Tracker` settings (``window``, ``retro``, ``colour_reach``, ``claim``,
            ``merge_ratio``, ...).

    Returns:
        T :class:`~textmask.components.Instances`, objects in id order; ``ids`` ``[K]`` int64 (from 1) name the
        same object in every frame it is in. An empty video gives ``[]``.

    Raises:
        InputError: ``masks`` is not ``[T, H, W]``, or ``images`` do not match it.
    """
    tracker = Tracker(threshold=threshold, min_area=min_area, **options)
    return tracker.update(masks, images) + tracker.finish()


def track_ids(found: list[Instances]) -> list[int]:
    """Every id in ``found`` (a :func:`track` result), sorted."""
    return sorted({int(i) for item in found for i in item.ids.tolist()})


def track_masks(found: list[Instances], ids: list[int] | None = None) -> torch.Tensor:
    """Per-track mask videos: ``[N, T, H, W]`` float32 (N = ``len(ids)``, by default every id in order), each
    object's mask in the frames it is in and 0 elsewhere."""
    if not found:
        return torch.zeros((0, 0, 0, 0))
    ids = track_ids(found) if ids is None else list(ids)
    height, width = found[0].size
    device = found[0].masks.device
    out = torch.zeros((len(ids), len(found), height, width), dtype=torch.float32, device=device)
    where = {track_id: n for n, track_id in enumerate(ids)}
    for t, item in enumerate(found):
        for k, track_id in enumerate(item.ids.tolist()):
            if track_id in where:
                out[where[track_id], t] = item.masks[k]
    return out


def describe_tracks(found: list[Instances], first_frame: int = 0) -> list[dict[str, Any]]:
    """Per frame, the objects as JSON-ready dicts: ``{"frame", "objects": [{"id", "box": [x0, y0, x1, y1],
    "score", "area"}, ...]}`` (boxes in pixels, ``x1``/``y1`` exclusive)."""
    frames = []
    for t, item in enumerate(found, start=first_frame):
        objects = [
            {"id": int(i), "box": [int(v) for v in box], "score": round(float(score), 6), "area": int(area)}
            for i, box, score, area in zip(item.ids.tolist(), item.boxes.tolist(), item.scores.tolist(),
                                           item.areas.tolist())
        ]  # fmt: skip
        frames.append({"frame": t, "objects": objects})
    return frames
