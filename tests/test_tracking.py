"""textmask.track (persistent ids: crossings, leaving and coming back, streams, empty videos, bad shapes),
textmask.stabilize (follows motion where the moving average lags, new content at once, streams, shapes), the
engine's ``stream(stabilize=...)``, and the IDF1 / id-switch code of benchmarks/video.py."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import textmask
from textmask import Stabilizer, Tracker, instances, stabilize, track
from textmask.errors import InputError
from textmask.postprocess import smooth_temporal
from textmask.tracking import describe_tracks, track_ids, track_masks

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("cv2", reason="stabilize needs opencv-python-headless (the video extra)")


def _bench():
    """benchmarks/video.py (its metrics: numpy, torch and scipy only at import)."""
    name = "textmask_video_benchmark"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "video.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _disc(height: int, width: int, cy: float, cx: float, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2).float()


def _crossing(frames: int = 36, height: int = 90, width: int = 140) -> tuple[torch.Tensor, list[list[tuple]]]:
    """Two discs that cross (and overlap into one blob for several frames): masks ``[T, H, W]`` and each
    disc's true centre per frame."""
    masks = torch.zeros(frames, height, width)
    centres = []
    for t in range(frames):
        a = (42.0, 12 + 3.2 * t)
        b = (50.0, 128 - 3.2 * t)
        masks[t] = torch.maximum(_disc(height, width, *a, 14) * 0.9, _disc(height, width, *b, 14) * 0.8)
        centres.append([a, b])
    return masks, centres


def _centre(found, k: int) -> tuple[float, float]:
    ys, xs = torch.nonzero(found.labels == k + 1, as_tuple=True)
    return float(ys.float().mean()), float(xs.float().mean())


# -------------------------------------------------------------------------------------------- track
def test_two_objects_crossing_keep_their_ids() -> None:
    masks, centres = _crossing()
    plain = instances(masks)
    assert min(len(item) for item in plain) == 1  # they do merge into one blob while crossing
    found = track(masks)
    assert track_ids(found) == [1, 2]
    for t, item in enumerate(found):
        assert item.ids.tolist() == [1, 2], f"frame {t}: {item.ids.tolist()}"
        for k, truth in enumerate(centres[t]):  # id 1 is the disc that started on the left, in every frame
            cy, cx = _centre(item, k)
            other = centres[t][1 - k]
            assert abs(cx - truth[1]) < 10 and abs(cy - truth[0]) < 6, f"frame {t}, id {k + 1}: {(cy, cx)} vs {truth}"
            if np.hypot(truth[0] - other[0], truth[1] - other[1]) > 12:  # and nearer its own disc than the other
                own, far = np.hypot(cy - truth[0], cx - truth[1]), np.hypot(cy - other[0], cx - other[1])
                assert own < far, f"frame {t}, id {k + 1}: {(cy, cx)} vs {truth}, {other}"
    assert found[0].boxes.dtype == torch.int64 and found[0].ids.dtype == torch.int64


def test_leaving_and_coming_back_within_the_window_keeps_the_id() -> None:
    frames, height, width = 40, 60, 80
    masks = torch.zeros(frames, height, width)
    for t in list(range(0, 10)) + list(range(25, 40)):  # gone for 15 frames (hidden, or out of view)
        masks[t] = _disc(height, width, 30, 20 + t, 9)
    masks[:, 5:15, 60:75] = 0.9  # a second, still object all along
    found = track(masks, window=20)  # ids in raster order of first sight: 1 the square, 2 the disc
    assert [item.ids.tolist() for item in found[:10]] == [[1, 2]] * 10
    assert all(item.ids.tolist() == [1] for item in found[10:25])
    assert all(item.ids.tolist() == [1, 2] for item in found[25:])
    assert abs(_centre(found[30], 1)[1] - 50) < 1  # id 2 is the disc
    # past the window it is a new object
    later = track(masks, window=10)
    assert later[30].ids.tolist() == [1, 3]


def test_an_object_that_enters_gets_a_new_id_and_one_that_leaves_ends() -> None:
    frames, height, width = 30, 50, 60
    masks = torch.zeros(frames, height, width)
    masks[:, 5:20, 5:20] = 0.9
    for t in range(10, frames):
        masks[t] = torch.maximum(masks[t], _disc(height, width, 35, -8 + 3 * (t - 10), 8))
    masks[20:, 5:20, 5:20] = 0.0
    found = track(masks, window=3)
    assert found[5].ids.tolist() == [1]
    assert found[15].ids.tolist() == [1, 2]
    assert found[25].ids.tolist() == [2]
    tracks = track_masks(found)
    assert tracks.shape == (2, frames, height, width)
    assert tracks[0, 25].sum() == 0 and tracks[1, 5].sum() == 0 and tracks[1, 25].sum() > 100
    described = describe_tracks(found)
    assert described[15]["frame"] == 15
    assert [o["id"] for o in described[15]["objects"]] == [1, 2]
    assert described[15]["objects"][0]["box"] == [5, 5, 20, 20] and described[15]["objects"][0]["area"] == 225


def test_stream_chunks_equal_one_piece() -> None:
    masks, _ = _crossing()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(masks.shape[0], *masks.shape[1:], 3, generator=generator)
    whole = track(masks, images)
    tracker = Tracker(retro=5)  # gives frames out 5 late, the rest at finish()
    pieces = tracker.update(masks[:7], images[:7])
    assert len(pieces) == 2
    pieces += tracker.update(masks[7:8], images[7:8]) + tracker.update(masks[8:], images[8:])
    assert tracker.frame == masks.shape[0] and len(pieces) == masks.shape[0] - 5
    pieces += tracker.finish()
    assert len(pieces) == len(whole)
    assert [a.ids.tolist() for a in whole] == [a.ids.tolist() for a in track(masks, images, retro=5)]
    for a, b in zip(whole, pieces):
        assert a.ids.tolist() == b.ids.tolist()
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
        assert torch.allclose(a.masks, b.masks)


def _parting(frames: int = 30, height: int = 80, width: int = 160) -> torch.Tensor:
    """Two discs touching (one blob) from the first frame until they part at about frame 12."""
    masks = torch.zeros(frames, height, width)
    for t in range(frames):
        a = _disc(height, width, 40, 60 - 1.5 * t, 13)
        b = _disc(height, width, 40, 85 + 1.5 * t, 13)
        masks[t] = torch.maximum(a, b)
    return masks


def test_touching_objects_that_part_get_two_ids_back_to_the_first_frame() -> None:
    masks = _parting()
    found = track(masks)
    assert [len(item) for item in found] == [2] * masks.shape[0]
    assert all(item.ids.tolist() == [1, 2] for item in found)
    # each id keeps to its own side of the blob, back to frame 0
    for t in (0, 5, 20):
        left, right = found[t].boxes.tolist()
        assert left[2] <= right[0] + 2, (t, left, right)
    # without the look-back, the blob is one object until the two part
    plain = track(masks, retro=0)
    assert len(plain[0]) == 1 and len(plain[-1]) == 2
    # as a stream, chunk by chunk: the same
    tracker = Tracker()
    pieces = tracker.update(masks[:10]) + tracker.update(masks[10:17]) + tracker.update(masks[17:])
    pieces += tracker.finish()
    assert [p.ids.tolist() for p in pieces] == [f.ids.tolist() for f in found]
    assert all(torch.equal(p.labels, f.labels) for p, f in zip(pieces, found))


def _textured(
    where: torch.Tensor, colour: tuple[float, float, float], generator: torch.Generator, noise: float = 0.12
) -> torch.Tensor:
    return torch.tensor(colour) + noise * torch.rand(int(where.sum()), 3, generator=generator)


Disc = Callable[[int], tuple[float, float, float]]  # frame → (cy, cx, radius)


def _two_discs(
    frames: int, height: int, width: int, seed: int, behind: Disc, front: Disc, colours: tuple, noise: float
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Two textured discs, ``front`` drawn over ``behind``, on a grey frame: the union masks ``[T, H, W]``, the
    frames ``[T, H, W, 3]`` and per frame the two objects' visible masks."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(frames, height, width)
    images = 0.5 + 0.05 * torch.rand(frames, height, width, 3, generator=generator)
    visible = []
    for t in range(frames):
        back = _disc(height, width, *behind(t)) > 0
        fore = _disc(height, width, *front(t)) > 0
        masks[t] = (back | fore).float()
        for where, colour in zip((back, fore), colours):
            images[t][where] = _textured(where, colour, generator, noise)
        visible.append((back & ~fore, fore))
    return masks, images.clamp(0, 1), visible


def _passing_behind(frames: int = 40, height: int = 80, width: int = 200) -> tuple[torch.Tensor, torch.Tensor, list]:
    """A red disc passing behind a bigger blue one (hidden whole for a few frames)."""
    return _two_discs(
        frames,
        height,
        width,
        seed=0,
        behind=lambda t: (40, 30 + 3.5 * t, 16),
        front=lambda t: (42, 170 - 3.5 * t, 20),
        colours=((0.85, 0.3, 0.2), (0.15, 0.3, 0.8)),
        noise=0.1,
    )


def test_an_object_passing_behind_another_is_told_apart_by_its_colours() -> None:
    masks, images, visible = _passing_behind()
    found = track(masks, images)
    assert track_ids(found) == [1, 2]
    assert found[0].ids.tolist() == [1, 2] and found[-1].ids.tolist() == [1, 2]
    for t in (17, 18, 30):  # half hidden, mostly hidden, out again: each mask is its object's
        for k, truth in enumerate(reversed(visible[t])):  # id 1: the front disc (its top row is found first)
            mask = found[t].labels == k + 1
            iou = (mask & truth).sum() / (mask | truth).sum()
            assert iou > 0.8, (t, k, float(iou))  # by position only: 0.55 for the hidden one at frame 18
    # by position only, the front disc's pixels near the hidden one's prediction go astray (extra ids)
    assert len(track_ids(track(masks, images, colour_reach=None))) > 2


def test_empty_video_gives_no_tracks() -> None:
    assert track(torch.zeros(0, 20, 30)) == []
    found = track(torch.zeros(5, 20, 30))
    assert [len(item) for item in found] == [0] * 5
    assert found[0].masks.shape == (0, 20, 30) and found[0].ids.shape == (0,)
    assert track_ids(found) == [] and track_masks(found).shape == (0, 5, 20, 30)


def test_bad_shapes_get_clear_errors() -> None:
    with pytest.raises(InputError, match=r"masks: expected \[T, H, W\]"):
        track(torch.zeros(20, 30))
    with pytest.raises(InputError, match=r"masks: expected \[T, H, W\]"):
        track(torch.zeros(2, 1, 20, 30))
    with pytest.raises(InputError, match="images: 3 frames for 2 masks"):
        track(torch.zeros(2, 20, 30), torch.zeros(3, 20, 30, 3))
    with pytest.raises(InputError, match="images: frames of"):
        track(torch.zeros(2, 20, 30), torch.zeros(2, 21, 30, 3))
    tracker = Tracker()
    tracker.update(torch.zeros(1, 20, 30))
    with pytest.raises(InputError, match="one size per video"):
        tracker.update(torch.zeros(1, 21, 30))
    with pytest.raises(ValueError, match="threshold"):
        track(torch.zeros(2, 20, 30), threshold=1.0)
    with pytest.raises(ValueError, match="retro / settle"):
        Tracker(retro=-1)
    with pytest.raises(ValueError, match="colour_reach"):
        Tracker(colour_reach=0)
    with pytest.raises(InputError, match=r"images: expected \[T, H, W, C\]"):
        stabilize(torch.zeros(2, 20, 30), torch.zeros(2, 20, 30))
    with pytest.raises(InputError, match="images: 2 frames for 3 masks"):
        stabilize(torch.zeros(2, 20, 30, 3), torch.zeros(3, 20, 30))
    with pytest.raises(InputError, match="masks: expected"):
        stabilize(torch.zeros(2, 20, 30, 3), torch.zeros(2, 30))
    with pytest.raises(InputError, match="aspect"):
        stabilize(torch.zeros(2, 20, 30, 3), torch.zeros(2, 30, 20))
    with pytest.raises(ValueError, match="strength"):
        stabilize(torch.zeros(2, 20, 30, 3), torch.zeros(2, 20, 30), strength=1.0)


def test_instances_ids_default_to_their_order() -> None:
    masks = torch.zeros(1, 30, 40)
    masks[0, 2:10, 2:10] = 1.0
    masks[0, 20:25, 20:25] = 1.0
    found = instances(masks, min_fraction=0)[0]
    assert found.ids.tolist() == [1, 2]


# ----------------------------------------------------------------------------------------- stabilize
def _moving_square(frames: int = 18, size: int = 96, speed: int = 3, seed: int = 0):
    """A textured square moving right over a still textured background: frames ``[T, H, W, 3]`` float, its
    true masks and noisy coarse masks (blurred, logit jitter per frame)."""
    generator = torch.Generator().manual_seed(seed)

    def texture() -> torch.Tensor:
        coarse = torch.rand(1, 3, 12, 12, generator=generator)
        return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)

    background, sprite = texture(), texture()
    images = torch.empty(frames, size, size, 3)
    truth = torch.zeros(frames, size, size)
    for t in range(frames):
        left = 10 + speed * t
        frame = background.clone()
        frame[:, 30:60, left : left + 30] = sprite[:, 30:60, 10:40]
        images[t] = frame.permute(1, 2, 0)
        truth[t, 30:60, left : left + 30] = 1.0
    blurred = F.avg_pool2d(truth[:, None], 9, stride=1, padding=4)[:, 0]
    logits = torch.logit((0.5 + 0.6 * (blurred - 0.5)).clamp(1e-3, 1 - 1e-3))
    jitter = F.interpolate(torch.randn(frames, 1, 8, 8, generator=generator), size=(size, size), mode="bilinear")
    coarse = torch.sigmoid(logits + 0.5 * jitter[:, 0])
    return images, truth, coarse


def _column(mask: torch.Tensor) -> float:
    """The mean column of a mask's pixels above 0.5."""
    xs = torch.nonzero(mask > 0.5, as_tuple=True)[1]
    return float(xs.float().mean())


def test_stabilize_follows_motion_where_the_moving_average_lags() -> None:
    images, truth, coarse = _moving_square()
    stable = stabilize(images, coarse, strength=0.8)
    average = smooth_temporal(coarse, 0.8)[0]
    late = range(8, truth.shape[0])
    stable_error = max(abs(_column(stable[t]) - _column(truth[t])) for t in late)
    average_lag = min(_column(truth[t]) - _column(average[t]) for t in late)
    assert stable_error < 2.0  # px, at 3 px per frame
    assert average_lag > 5.0  # the moving average trails the square
    # and it is steadier than the per-frame masks: smaller change from frame to frame along the motion
    shifted = torch.roll(stable[:-1], shifts=3, dims=-1)
    raw_shifted = torch.roll(coarse[:-1], shifts=3, dims=-1)
    inner = (slice(None), slice(20, 70), slice(40, 90))
    assert (stable[1:] - shifted)[inner].abs().mean() < 0.6 * (coarse[1:] - raw_shifted)[inner].abs().mean()


def test_stabilize_takes_new_content_at_once() -> None:
    images, _, coarse = _moving_square()
    coarse = coarse.clone()
    coarse[12:, 70:90, 5:25] = 0.85  # an object appears in frame 12 (same image: only the mask says so)
    out = stabilize(images, coarse)
    assert out[12, 75:85, 10:20].min() > 0.8
    assert out.shape == coarse.shape and out.dtype == torch.float32


def test_stabilize_stream_chunks_equal_one_piece_and_planes() -> None:
    images, _, coarse = _moving_square(frames=12)
    whole = stabilize(images, coarse)
    run = Stabilizer()
    pieces = torch.cat([run(images[:5], coarse[:5]), run(images[5:6], coarse[5:6]), run(images[6:], coarse[6:])])
    assert torch.allclose(whole, pieces, atol=1e-6)
    # several prompts per frame [T, P, H, W], and uint8 frames, give the same as one prompt at a time
    planes = torch.stack([coarse, 1 - coarse], 1)
    levels = (images * 255).to(torch.uint8)
    both = stabilize(levels, planes)
    assert torch.allclose(both[:, 0], stabilize(levels, coarse), atol=1e-6)
    assert Stabilizer(0.0)(images, coarse).equal(coarse)


def test_session_stream_stabilize(tiny_session) -> None:
    images, _, _ = _moving_square(frames=6, size=64)
    stream = tiny_session.stream([["a cat"]], stabilize=0.7, batch_size=2)
    chunked = torch.cat([stream(images[:4]), stream(images[4:])])
    whole = tiny_session.stream([["a cat"]], stabilize=0.7)(images)
    plain = tiny_session.stream([["a cat"]])(images)
    assert chunked.shape == (6, 1, 64, 64)
    assert torch.allclose(chunked, whole, atol=1e-5)
    assert torch.allclose(whole[0], plain[0], atol=1e-6)  # the first frame has no past
    with pytest.raises(ValueError, match="smoothing or stabilize"):
        tiny_session.stream([["a cat"]], smoothing=0.5, stabilize=0.5)
    with pytest.raises(ValueError, match="stabilize strength"):
        tiny_session.stream([["a cat"]], stabilize=1.5)


def test_stabilize_is_exported() -> None:
    assert textmask.stabilize is stabilize and textmask.track is track


# ------------------------------------------------------------------------------------ benchmark metrics
def _frame(ids: list[int], boxes: list[tuple[int, int, int, int]]) -> tuple[list[int], np.ndarray]:
    masks = np.zeros((len(ids), 20, 40), dtype=bool)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        masks[k, y0:y1, x0:x1] = True
    return ids, masks


def test_id_scores_perfect_tracking() -> None:
    bench = _bench()
    truth = [_frame([1, 2], [(0, 0, 10, 10), (10, 20, 20, 30)]) for _ in range(4)]
    found = [_frame([7, 9], [(0, 0, 10, 10), (10, 20, 20, 30)]) for _ in range(4)]
    scores = bench.id_scores(truth, found)
    assert scores["idf1"] == pytest.approx(1.0) and scores["switches"] == 0


def test_id_scores_swap_counts_switches_and_halves_idf1() -> None:
    bench = _bench()
    boxes = [(0, 0, 10, 10), (10, 20, 20, 30)]
    truth = [_frame([1, 2], boxes) for _ in range(4)]
    found = [_frame([7, 9], boxes) for _ in range(2)] + [_frame([9, 7], boxes) for _ in range(2)]
    scores = bench.id_scores(truth, found)
    assert scores["switches"] == 2  # each true object changes found id once
    assert scores["idf1"] == pytest.approx(0.5)  # 4 of 8 true object-frames under the best fixed pairing


def test_id_scores_misses_and_false_objects() -> None:
    bench = _bench()
    truth = [_frame([1], [(0, 0, 10, 10)]) for _ in range(4)]
    # frame 0: found nothing; frame 1: a box that overlaps too little (IoU 0.33); frames 2-3: right, plus a
    # false object in frame 3
    found = [_frame([], []), _frame([5], [(0, 5, 10, 15)]), _frame([5], [(0, 0, 10, 10)])]
    found.append(_frame([5, 6], [(0, 0, 10, 10), (10, 30, 20, 40)]))
    scores = bench.id_scores(truth, found)
    assert scores["idtp"] == 2 and scores["truths"] == 4 and scores["found"] == 4
    assert scores["idf1"] == pytest.approx(2 * 2 / 8)
    assert scores["switches"] == 0


def test_flicker_is_zero_for_the_truth_and_positive_for_noise() -> None:
    bench = _bench()
    video = bench.make_video(0, 0, frames=6, size=96)
    truth = torch.from_numpy(video.truth)
    assert bench.flicker(truth, video) == pytest.approx(0.0, abs=1e-6)
    assert bench.flicker(video.coarse, video) > 0.01


def _sharing(frames: int = 30, height: int = 80, width: int = 160) -> tuple[torch.Tensor, torch.Tensor, list]:
    """A red disc and a blue one in one blob from the first frame to the last, the blue one in front and
    slower (they slide against each other but never part)."""
    return _two_discs(
        frames,
        height,
        width,
        seed=1,
        behind=lambda t: (28, 30 + 2 * t, 18),
        front=lambda t: (50, round(52 + 0.5 * t), 18),
        colours=((0.8, 0.25, 0.2), (0.15, 0.3, 0.8)),
        noise=0.12,
    )


def test_appearance_split_tells_two_objects_that_never_part() -> None:
    masks, images, visible = _sharing()
    # by default (and without it) one blob is one object all along
    assert track_ids(track(masks, images)) == [1]
    found = track(masks, images, appearance_split=5)
    assert track_ids(found) == [1, 2]
    # from the first frame where the two colour parts held (frame 1: the parts' steps need a frame before)
    assert all(item.ids.tolist() == [1, 2] for item in found[1:]), [item.ids.tolist() for item in found]
    for t in (1, 10, 29):
        ious = []
        for truth in visible[t]:
            best = max(((found[t].labels == k + 1) & truth).sum() / ((found[t].labels == k + 1) | truth).sum()
                       for k in range(2))  # fmt: skip
            ious.append(float(best))
        assert min(ious) > 0.8, (t, ious)
    # chunk by chunk: the same
    tracker = Tracker(appearance_split=5)
    pieces = tracker.update(masks[:3], images[:3]) + tracker.update(masks[3:11], images[3:11])
    pieces += tracker.update(masks[11:], images[11:]) + tracker.finish()
    assert [p.ids.tolist() for p in pieces] == [f.ids.tolist() for f in found]
    assert all(torch.equal(p.labels, f.labels) for p, f in zip(pieces, found))


def test_appearance_split_keeps_one_object_of_two_colours() -> None:
    """One disc, its left half red and its right half blue, moving alone: its two colour parts are large, each
    in one piece and well apart in colour, for every frame, but they move as one, and that guard keeps it one
    object."""
    generator = torch.Generator().manual_seed(2)
    frames, height, width = 30, 80, 160
    masks = torch.zeros(frames, height, width)
    images = 0.5 + 0.05 * torch.rand(frames, height, width, 3, generator=generator)
    xx = torch.arange(width).view(1, -1).expand(height, width)
    for t in range(frames):
        x = 30 + 3 * t
        disc = _disc(height, width, 40, x, 22) > 0
        masks[t] = disc.float()
        left, right = disc & (xx < x), disc & (xx >= x)
        images[t][left] = _textured(left, (0.8, 0.25, 0.2), generator)
        images[t][right] = _textured(right, (0.15, 0.3, 0.8), generator)
    tracker = Tracker(appearance_split=5)
    found = tracker.update(masks, images.clamp(0, 1))
    assert len(tracker._tracks[0].parts) >= 5  # the colour guards held: only the motion one says no
    found += tracker.finish()
    assert track_ids(found) == [1] and all(len(item) == 1 for item in found)
