"""DnD attention crops: the input region, the heatmap normalisation and the box selection (methods.md §4.1, §4.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from discover_ray.describe.crops import Crop, Region, attention_crops, heatmap_to_uint8, input_region, iou

SIZE = 375
CELL = SIZE / 7  # one cell of a 7×7 map laid over the whole 375×375 image


def _image(width: int = 500, height: int = 400) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _boxes(crops: list[Crop]) -> list[tuple[int, int, int, int]]:
    return [c.box for c in crops]


# --- input_region -------------------------------------------------------------------------------------------


def test_imagenet_preprocessing_on_a_square_image_shows_the_central_87_5_percent() -> None:
    region = input_region([T.Resize(256), T.CenterCrop(224)], 500, 500)
    assert region.box == pytest.approx((0.0625, 0.0625, 0.9375, 0.9375))
    assert region.exact


def test_imagenet_preprocessing_on_a_landscape_image() -> None:
    # 400×300: the shorter side (h) → 256, w → int(256·400/300) = 341; CenterCrop 224 starts at
    # round((341 − 224)/2) = round(58.5) = 58 (Python rounds half to even) across, at (256 − 224)/2 = 16 down.
    region = input_region([T.Resize(256), T.CenterCrop(224)], 400, 300)
    assert region.box == pytest.approx((58 / 341, 16 / 256, 282 / 341, 240 / 256))
    assert region.exact


def test_a_compose_is_walked_and_value_steps_are_ignored() -> None:
    steps = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.5] * 3, [0.2] * 3)])
    assert input_region(steps, 400, 300) == input_region([T.Resize(256), T.CenterCrop(224)], 400, 300)
    nested = [T.Compose([T.Resize(256)]), v2.Compose([v2.CenterCrop(224), v2.ToImage(), v2.ToDtype(torch.float32)])]
    assert input_region(nested, 400, 300).box == pytest.approx(input_region(steps, 400, 300).box)


def test_resize_to_h_w_stretches_the_whole_image() -> None:
    region = input_region([T.Resize((224, 224)), T.ToTensor()], 640, 200)
    assert region.box == (0.0, 0.0, 1.0, 1.0)
    assert region.exact


@pytest.mark.parametrize("step", [T.RandomResizedCrop(224), T.Pad(4), T.RandomHorizontalFlip(), T.Lambda(lambda x: x)])
def test_an_unknown_geometric_step_gives_the_full_image_flagged_inexact(step: object) -> None:
    region = input_region([T.Resize(256), step, T.CenterCrop(224)], 500, 500)
    assert region.box == (0.0, 0.0, 1.0, 1.0)
    assert not region.exact


def test_a_portrait_image_truncates_the_longer_side_like_torchvision() -> None:
    # 301×517: w → 256, h → int(256·517/301) = int(439.7) = 439 (not 440); the crop starts round(107.5) = 108
    # down (half to even).
    region = input_region([T.Resize(256), T.CenterCrop(224)], 301, 517)
    assert region.box == pytest.approx((16 / 256, 108 / 439, 240 / 256, 332 / 439))


def test_a_crop_larger_than_the_image_is_clipped_but_keeps_its_padded_view() -> None:
    # 201×99 with CenterCrop 224: torchvision pads 23 px across (11 before, 12 after) and 125 px down (62, 63).
    region = input_region([T.CenterCrop(224)], 201, 99)
    assert region.box == (0.0, 0.0, 1.0, 1.0)
    assert region.view == pytest.approx((-11 / 201, -62 / 99, 213 / 201, 162 / 99))
    assert region.exact


@pytest.mark.parametrize(
    ("steps", "width", "height"),
    [
        ([T.Resize(256), T.CenterCrop(224)], 400, 300),
        ([T.Resize(256), T.CenterCrop(224)], 301, 517),
        ([T.Resize([235]), T.CenterCrop((200, 180))], 333, 250),
        ([T.Resize(64, max_size=80), T.CenterCrop(60)], 300, 100),
        ([v2.Resize(size=None, max_size=90), v2.CenterCrop(70)], 120, 200),
        ([T.CenterCrop((50, 121))], 100, 80),  # pads across only
    ],
)
def test_the_region_matches_what_torchvision_actually_does(steps: list[object], width: int, height: int) -> None:
    """Push an image whose pixels hold their own (1-based) coordinates through the real transforms."""
    xs = torch.arange(1, width + 1, dtype=torch.float32).expand(height, width)
    ys = torch.arange(1, height + 1, dtype=torch.float32)[:, None].expand(height, width)
    picture = torch.stack([xs, ys])
    for step in steps:
        if isinstance(step, (T.Resize, v2.Resize)):
            step.interpolation = InterpolationMode.NEAREST
        picture = step(picture)
    region = input_region(steps, width, height)
    vx0, vy0, vx1, vy1 = region.view
    for channel, (lo, hi, n) in enumerate([(vx0, vx1, width), (vy0, vy1, height)]):
        # A line through the middle, so that it misses the padding across it.
        line = picture[0, picture.shape[1] // 2, :] if channel == 0 else picture[1, :, picture.shape[2] // 2]
        inside = torch.nonzero(line > 0).flatten()  # zeros are padding
        first, last = int(inside[0]), int(inside[-1])
        step = (hi - lo) * n / len(line)  # original pixels per model-input pixel, by the region
        # Input pixel i covers original [lo·n + i·step, lo·n + (i + 1)·step); NEAREST samples a pixel in it.
        assert lo * n + first * step == pytest.approx(float(line[first]) - 1, abs=step + 1.0)
        assert lo * n + (last + 1) * step == pytest.approx(float(line[last]), abs=step + 1.0)
        if lo < 0:
            assert first * step == pytest.approx(-lo * n, abs=1.0)  # the padding is where the region says


# --- heatmap_to_uint8 ----------------------------------------------------------------------------------------


def test_heatmap_to_uint8_spans_0_to_255_and_rounds() -> None:
    grey = heatmap_to_uint8(np.array([[2.0, 3.0], [4.0, 6.0]]))
    assert grey is not None and grey.dtype == np.uint8
    assert grey.tolist() == [[0, 64], [128, 255]]  # 63.75 → 64, 127.5 → 128


def test_heatmap_to_uint8_handles_large_post_relu_values() -> None:
    grey = heatmap_to_uint8(np.array([[0.0, 7.5], [15.0, 30.0]], dtype=np.float32))  # ×255 would wrap in REF
    assert grey is not None and grey.tolist() == [[0, 64], [128, 255]]


@pytest.mark.parametrize("flat", [np.full((3, 4), 2.5), np.full((2, 2), np.nan), np.array([[np.inf, np.nan]])])
def test_a_flat_heatmap_gives_none(flat: np.ndarray) -> None:
    assert heatmap_to_uint8(flat) is None


def test_non_finite_entries_become_the_finite_minimum() -> None:
    grey = heatmap_to_uint8(np.array([[np.nan, 1.0], [3.0, np.inf], [-np.inf, 2.0]]))
    assert grey is not None and grey.tolist() == [[0, 0], [255, 0], [0, 128]]


def test_heatmap_to_uint8_rejects_a_non_2d_map() -> None:
    with pytest.raises(ValueError):
        heatmap_to_uint8(np.zeros((2, 3, 4)))


# --- iou ------------------------------------------------------------------------------------------------------


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching, exclusive ends
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


# --- attention_crops -------------------------------------------------------------------------------------------


def test_two_blobs_give_two_crops_over_them_largest_first() -> None:
    heatmap = np.zeros((7, 7))
    heatmap[1, 1] = 1.0  # one cell: 53.6..107.1 px, centre 80.4
    heatmap[4:6, 4:6] = 1.0  # two by two cells: 214.3..321.4 px, centre 267.9
    crops = attention_crops(_image(), heatmap)
    assert len(crops) == 2
    (big, small) = _boxes(crops)
    for box, first, last in [(big, 4, 5), (small, 1, 1)]:
        centre = (first + last + 1) / 2 * CELL
        for lo, hi in [(box[0], box[2]), (box[1], box[3])]:
            assert lo < first * CELL + 10 and hi > (last + 1) * CELL - 10  # covers the hot cells…
            assert lo > (first - 0.5) * CELL and hi < (last + 1.5) * CELL  # …but not their neighbours' centres
            assert abs((lo + hi) / 2 - centre) < 4
    assert (big[2] - big[0]) * (big[3] - big[1]) > (small[2] - small[0]) * (small[3] - small[1])


def test_crop_images_are_the_box_of_the_resized_image_at_full_size() -> None:
    image = _image(640, 480)
    heatmap = np.zeros((7, 7))
    heatmap[2, 3] = 5.0
    (crop,) = attention_crops(image, heatmap)
    assert crop.image.mode == "RGB" and crop.image.size == (SIZE, SIZE)
    expected = image.resize((SIZE, SIZE)).crop(crop.box).resize((SIZE, SIZE))
    assert np.array_equal(np.asarray(crop.image), np.asarray(expected))


def test_a_grey_or_palette_image_gives_rgb_crops() -> None:
    heatmap = np.zeros((7, 7))
    heatmap[3, 3] = 1.0
    for mode in ("L", "P"):
        (crop,) = attention_crops(_image().convert(mode), heatmap, size=64)
        assert crop.image.mode == "RGB" and crop.image.size == (64, 64)


def test_a_blob_over_almost_everything_is_rejected_by_the_full_image_rule() -> None:
    heatmap = np.ones((7, 7))
    heatmap[6, 6] = 0.0
    assert attention_crops(_image(), heatmap) == []
    assert len(attention_crops(_image(), heatmap, full_iou_max=1.01)) == 1


def test_a_flat_heatmap_gives_no_crops() -> None:
    assert attention_crops(_image(), np.full((7, 7), 3.0)) == []
    assert attention_crops(_image(), np.zeros((7, 7))) == []


def _shapes_heatmap() -> np.ndarray:
    """A 375×375 map (laid 1:1 over the image, so its boxes are exact): an L, a square in its corner, a dot."""
    heatmap = np.zeros((SIZE, SIZE))
    heatmap[10:200, 10:40] = 1.0  # the L: box (10, 10, 40→200, 200), area 190·190 = 36 100
    heatmap[170:200, 10:200] = 1.0
    heatmap[15:165, 50:195] = 1.0  # in the L's corner, disjoint from it: box (50, 15, 195, 165), 21 750, IoU 0.60
    heatmap[250:300, 250:300] = 1.0  # far away: box (250, 250, 300, 300), 2 500
    return heatmap


def test_the_iou_rule_rejects_the_smaller_of_two_overlapping_boxes() -> None:
    heatmap = _shapes_heatmap()
    assert _boxes(attention_crops(_image(), heatmap)) == [(10, 10, 200, 200), (250, 250, 300, 300)]
    loose = attention_crops(_image(), heatmap, iou_max=0.7)
    assert _boxes(loose) == [(10, 10, 200, 200), (50, 15, 195, 165), (250, 250, 300, 300)]


def test_max_crops_caps_the_count_and_ties_go_top_then_left() -> None:
    heatmap = np.zeros((SIZE, SIZE))
    squares = [(300, 20, 40), (20, 300, 40), (20, 20, 40), (150, 150, 60), (300, 300, 20), (150, 20, 40)]
    for x, y, side in squares:
        heatmap[y : y + side, x : x + side] = 1.0
    everything = _boxes(attention_crops(_image(), heatmap, max_crops=10))
    assert everything == [
        (150, 150, 210, 210),  # largest first
        (20, 20, 60, 60),  # then the 40 px squares by top, then left
        (150, 20, 190, 60),
        (300, 20, 340, 60),
        (20, 300, 60, 340),
        (300, 300, 320, 320),
    ]
    assert _boxes(attention_crops(_image(), heatmap)) == everything[:4]
    assert _boxes(attention_crops(_image(), heatmap, max_crops=2)) == everything[:2]
    assert attention_crops(_image(), heatmap, max_crops=0) == []


def test_the_map_sits_over_the_part_of_the_image_the_model_saw() -> None:
    """methods.md §4.4: after Resize 256 + CenterCrop 224 the map's top-left cell is at 0.0625·375 ≈ 23 px."""
    heatmap = np.zeros((7, 7))
    heatmap[0, 0] = 1.0
    region = input_region(T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()]), 500, 500)
    (shifted,) = attention_crops(_image(), heatmap, region)
    (stretched,) = attention_crops(_image(), heatmap)
    assert shifted.box[:2] == (23, 23)  # floor(0.0625·375 + 0.5)
    assert stretched.box[:2] == (0, 0)  # the reference's stretch
    # The cell is 329/7 = 47 px wide instead of 375/7 = 53.6: the box shrinks by the same factor (±2 px).
    for axis in (0, 1):
        width = shifted.box[axis + 2] - shifted.box[axis]
        assert width == pytest.approx((stretched.box[axis + 2] - stretched.box[axis]) * 329 / 375, abs=2)
    # A tuple region does the same.
    assert attention_crops(_image(), heatmap, (0.0625, 0.0625, 0.9375, 0.9375))[0].box == shifted.box


def test_a_padded_view_pushes_the_padding_off_the_canvas() -> None:
    # The model input extends a whole image past every side: a 5×5 map's cells are 60 px wide, from −100 px,
    # so its bottom-right cell (140..200 px, bicubic spreading it to its neighbours' centres: 110..230) lies wholly
    # over padding.
    heatmap = np.zeros((5, 5))
    heatmap[4, 4] = 1.0
    region = Region(0.0, 0.0, 1.0, 1.0, view=(-1.0, -1.0, 2.0, 2.0))
    assert attention_crops(_image(), heatmap, region, size=100) == []
    heatmap[2, 2] = 1.0  # the centre cell: 20..80 px
    (crop,) = attention_crops(_image(), heatmap, region, size=100)
    assert all(abs(a - b) <= 6 for a, b in zip(crop.box, (20, 20, 80, 80)))


def test_inputs_are_never_modified() -> None:
    image = _image()
    pixels = np.asarray(image).copy()
    heatmap = np.zeros((7, 7), dtype=np.float32)
    heatmap[1, 1], heatmap[3, 5], heatmap[6, 0] = 4.0, np.nan, 2.0
    before = heatmap.copy()
    crops = attention_crops(image, heatmap, (0.1, 0.0, 0.9, 1.0))
    assert crops
    assert np.array_equal(np.asarray(image), pixels) and image.size == (500, 400) and image.mode == "RGB"
    assert np.array_equal(heatmap, before, equal_nan=True) and heatmap.dtype == np.float32


@pytest.mark.parametrize("region", [(0.5, 0.0, 0.5, 1.0), (0.0, 0.0, 1.0), (0.0, float("nan"), 1.0, 1.0)])
def test_a_bad_region_is_refused(region: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        attention_crops(_image(), np.eye(7), region)
