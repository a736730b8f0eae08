"""Display planes (radiological orientation, physical aspect), error location, overlay PNGs."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import GeometryError, UsageError
from medseg.report import render_overlay_png
from medseg.report.locate import error_centre, labels_near, structure_centre
from medseg.report.overlays import CT_WINDOW, choose_window
from medseg.report.planes import cut_planes, to_ras
from medseg.volume import Volume, affine_from


def _marked(orientation: str) -> Volume:
    """(10, 8, 6) voxels of (1, 2, 3) mm; the voxel most right, anterior, superior is 1."""
    ras = np.zeros((10, 8, 6), np.uint8)
    ras[9, 7, 5] = 1
    ras[0, 0, 0] = 2  # most left, posterior, inferior
    array = ras
    if orientation == "LPS":  # same world content stored with x and y reversed
        array = ras[::-1, ::-1, :]
    affine = affine_from((1.0, 2.0, 3.0), orientation)
    return Volume(np.ascontiguousarray(array), affine)


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_planes_are_radiological_with_physical_pixels(orientation):
    volume = _marked(orientation)
    grid = to_ras({"gt": volume})
    assert grid.spacing_mm == (1.0, 2.0, 3.0)
    axial, coronal, sagittal = cut_planes(grid, (9, 7, 5))
    # Patient right (axial, coronal) or anterior (sagittal) on the viewer's left; up = A / S.
    for plane in (axial, coronal, sagittal):
        assert plane.slices["gt"][0, 0] == 1, plane.name
        assert plane.marker_mm == (0.5 * plane.pixel_mm[1], 0.5 * plane.pixel_mm[0])
    assert axial.edges == ("R", "L", "A", "P") and axial.pixel_mm == (2.0, 1.0)
    assert coronal.edges == ("R", "L", "S", "I") and coronal.pixel_mm == (3.0, 1.0)
    assert sagittal.edges == ("A", "P", "S", "I") and sagittal.pixel_mm == (3.0, 2.0)
    assert axial.size_mm == (10.0, 16.0) and coronal.size_mm == (10.0, 18.0)
    far = cut_planes(grid, (0, 0, 0))[0].slices["gt"]
    assert far[-1, -1] == 2  # patient left-posterior at the viewer's bottom right


def test_error_centre_finds_the_dense_error_with_anisotropic_spacing():
    gt = np.zeros((40, 40, 20), np.uint8)
    gt[5:35, 5:35, 3:17] = 1
    pred = gt.copy()
    pred[25:31, 8:14, 10:13] = 0  # a dense hole
    pred[6, 30, 5] = 0  # a few scattered voxels
    pred[33, 33, 15] = 0
    centre = error_centre(gt, pred, (1.0, 1.0, 2.5), sigma_mm=3.0)
    assert 25 <= centre[0] <= 30 and 8 <= centre[1] <= 13 and 10 <= centre[2] <= 12
    assert labels_near(gt, pred, centre, (1.0, 1.0, 2.5)) == [1]
    assert error_centre(gt, gt, (1.0, 1.0, 1.0)) is None


def test_structure_centre_lies_in_the_biggest_structure():
    label = np.zeros((30, 30, 10), np.uint8)
    label[2:28, 2:6, :] = 3  # a U: its centroid is outside it
    label[2:6, 2:28, :] = 3
    label[24:28, 2:28, :] = 3
    label[12:16, 12:16, 4:6] = 1  # small
    centre = structure_centre(label)
    assert label[centre] == 3
    assert structure_centre(np.zeros((4, 4, 4), np.uint8)) is None


def test_windows():
    ct = np.array([[-1024.0, 0.0], [40.0, 1500.0]])
    assert choose_window(ct) == CT_WINDOW == (-160.0, 240.0)
    mr = np.linspace(0.0, 1000.0, 1001)
    low, high = choose_window(mr)
    assert low == pytest.approx(10.0) and high == pytest.approx(990.0)
    assert choose_window(mr, "ct") == CT_WINDOW
    assert choose_window(ct, (-1000, 200)) == (-1000.0, 200.0)
    with pytest.raises(UsageError, match="high > low"):
        choose_window(ct, (5, 5))
    with pytest.raises(UsageError, match="'ct', 'mr'"):
        choose_window(ct, "bone")


def _colour_pixels(png_path):
    from matplotlib.image import imread

    rgb = imread(png_path)[..., :3]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    green = (g > 0.7) & (r < 0.4) & (b < 0.5)
    red = (r > 0.8) & (g < 0.4) & (b < 0.4)
    return rgb.shape, int(green.sum()), int(red.sum())


def test_render_overlay_png_compare_and_preview(tmp_path):
    from medseg.data.phantom import make_phantom

    case = make_phantom((48, 40, 24), (5.0, 5.0, 8.0), seed=3)
    pred = case.label.with_array(np.where(case.label.array == 1, 0, case.label.array))
    out = tmp_path / "compare.png"
    render_overlay_png(case.image, case.label, out, pred=pred)
    shape, green, red = _colour_pixels(out)
    assert shape[1] > shape[0] > 200
    assert green > 500 and red > 50  # both contour sets drawn (prediction dashed)
    preview = tmp_path / "preview.png"
    render_overlay_png(case.image, pred, preview, label_names=case.label_names)
    assert preview.stat().st_size > 10_000


def test_render_overlay_png_rejects_other_grids(tmp_path):
    from medseg.data.phantom import make_phantom

    a = make_phantom((24, 24, 12), seed=0)
    b = make_phantom((24, 24, 14), seed=0)
    out = tmp_path / "x.png"
    with pytest.raises(GeometryError, match="not on the label's grid"):
        render_overlay_png(a.image, a.label, out, pred=b.label)
    assert not out.exists() and list(tmp_path.iterdir()) == []
