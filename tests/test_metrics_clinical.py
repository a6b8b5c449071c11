"""Tests of cardigan_tf.metrics.clinical: Simpson's biplane volumes of ellipsoids, EF, agreement.

Geometry of the test LV: an ellipsoid with semi-axes a (long axis, vertical, apex at the top),
b (seen in the 2CH slice) and c (4CH slice), cut flat ``CUT`` mm above its lower pole. The flat
cut plays the mitral plane: the method looks for a straight basal segment, which a full ellipse
does not have (its flattest stretch is on a flank, so the base would be found there). A 4 mm cap
holds 3h^2/(4a^2) - h^3/(4a^3) = 0.73 % of the ellipsoid, so comparing with 4/3 pi a b c within
2 % stays meaningful; the exact volume of the truncated ellipsoid is checked more tightly.
"""

import math

import numpy as np
import pytest

from cardigan_tf.metrics import clinical

CUT = 4.0  # mm cut off the lower pole (the base)
TOP = 8.0  # mm between the image top and the apex


def lv_slice(a, b, spacing, cut=CUT, tilt_deg=0.0, label=1, myo=False):
    """Label mask of an ellipse (semi-axes a vertical, b horizontal, mm) cut flat near its base.

    Pixels whose centres (in mm) fall inside are set; ``tilt_deg`` rotates the long axis.
    """
    sr, sc = spacing
    h, w = int((TOP + 2 * a + 15) / sr), int((2 * a + 20) / sc)
    y = (np.arange(h) + 0.5) * sr - (TOP + a)
    x = (np.arange(w) + 0.5) * sc - (a + 10)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    t = math.radians(tilt_deg)
    v = yy * math.cos(t) + xx * math.sin(t)      # along the (tilted) long axis
    u = -yy * math.sin(t) + xx * math.cos(t)
    inside = (v / a) ** 2 + (u / b) ** 2 <= 1.0
    inside &= v <= a - cut
    mask = np.zeros((h, w), np.uint8)
    if myo:
        ring = ((v / (a + 3)) ** 2 + (u / (b + 3)) ** 2 <= 1.0) & (v <= a - cut)
        mask[ring] = 2
    mask[inside] = label
    return mask


def truncated_volume(a, b, c, cut=CUT):
    """Exact volume (ml) of the ellipsoid minus its lower cap of height ``cut``."""
    z1 = a - cut
    return math.pi * b * c * ((z1 - z1 ** 3 / (3 * a * a)) + (2 * a / 3)) / 1000.0


SP_2CH = (0.3, 0.5)   # anisotropic, and different in the two views
SP_4CH = (0.45, 0.3)


def test_simpson_volume_of_ellipsoid():
    a, b, c = 40.0, 20.0, 24.0
    m2 = lv_slice(a, b, SP_2CH)
    m4 = lv_slice(a, c, SP_4CH)
    v = clinical.simpson_biplane(m2, m4, SP_2CH, SP_4CH)
    assert v == pytest.approx(4.0 / 3.0 * math.pi * a * b * c / 1000.0, rel=0.02)
    assert v == pytest.approx(truncated_volume(a, b, c), rel=0.015)


def _ellipse_chord(point, direction, a, b, tilt_deg, cut):
    """Analytic length (mm) of the line ``point + s * direction`` inside a ``lv_slice`` shape."""
    t = math.radians(tilt_deg)
    y0, x0 = point[0] - (TOP + a), point[1] - (a + 10)
    v0, u0 = y0 * math.cos(t) + x0 * math.sin(t), -y0 * math.sin(t) + x0 * math.cos(t)
    dv = direction[0] * math.cos(t) + direction[1] * math.sin(t)
    du = -direction[0] * math.sin(t) + direction[1] * math.cos(t)
    qa, qb = dv * dv / a ** 2 + du * du / b ** 2, 2 * (v0 * dv / a ** 2 + u0 * du / b ** 2)
    qc = v0 * v0 / a ** 2 + u0 * u0 / b ** 2 - 1
    disc = qb * qb - 4 * qa * qc
    if disc <= 0:
        return 0.0
    s0, s1 = sorted(((-qb - math.sqrt(disc)) / (2 * qa), (-qb + math.sqrt(disc)) / (2 * qa)))
    if abs(dv) > 1e-12:  # clip by the flat base v <= a - cut
        s_cut = (a - cut - v0) / dv
        s0, s1 = (s0, min(s1, s_cut)) if dv > 0 else (max(s0, s_cut), s1)
    return max(0.0, s1 - s0)


def test_tilted_lv_with_wide_base():
    """A tilted LV cut through its wide part: axis found, disks match the analytic chords."""
    a, b, c, tilt, cut = 40.0, 20.0, 24.0, 25.0, 20.0
    tol = clinical.DEFAULT_BASE_TOL_MM
    axes, diameters = [], []
    for semi, sp, tt in ((b, SP_2CH, tilt), (c, SP_4CH, -tilt)):
        ax = clinical.lv_long_axis(lv_slice(a, semi, sp, cut=cut, tilt_deg=tt), sp)
        t = math.radians(tt)
        u = (ax.apex - ax.mid) / ax.length_mm
        assert math.degrees(math.atan2(-u[1], -u[0])) == pytest.approx(tt, abs=3.5)
        base_centre = np.array([TOP + a, a + 10]) + (a - cut) * np.array([math.cos(t), math.sin(t)])
        assert np.linalg.norm(ax.mid - base_centre) <= tol + 0.5
        assert ax.length_mm == pytest.approx(2 * a - cut, abs=tol + 0.5)
        normal = np.array([-u[1], u[0]])
        expected = [_ellipse_chord(p, normal, a, semi, tt, cut) for p in ax.disk_centres]
        np.testing.assert_allclose(ax.diameters_mm, expected, atol=1.0)
        axes.append(ax)
        diameters.append(np.asarray(expected))
    step = max(ax.length_mm for ax in axes) / clinical.N_DISKS
    analytic_disks = float(np.sum(diameters[0] * diameters[1]) * math.pi / 4 * step / 1000)
    v = clinical.simpson_biplane(lv_slice(a, b, SP_2CH, cut=cut, tilt_deg=tilt),
                                 lv_slice(a, c, SP_4CH, cut=cut, tilt_deg=-tilt), SP_2CH, SP_4CH)
    assert v == pytest.approx(analytic_disks, rel=0.01)
    # the method of disks itself overestimates a wide-based shape slightly (first disk at the base)
    assert 0.99 < v / truncated_volume(a, b, c, cut) < 1.05


def test_long_axis_geometry():
    a, b = 40.0, 20.0
    ax = clinical.lv_long_axis(lv_slice(a, b, SP_2CH), SP_2CH)
    base_row = TOP + 2 * a - CUT
    centre_col = a + 10
    tol = clinical.DEFAULT_BASE_TOL_MM
    # base: a horizontal chord on the flat cut, centred, at least as wide as the cut
    assert abs(ax.base[0][0] - ax.base[1][0]) < 1.0
    assert base_row - tol - 0.5 <= ax.mid[0] <= base_row + 0.5
    assert ax.mid[1] == pytest.approx(centre_col, abs=1.0)
    cut_width = 2 * b * math.sqrt(1 - ((a - CUT) / a) ** 2)
    assert abs(ax.base[0][1] - ax.base[1][1]) >= cut_width - 1.0
    # apex at the top of the ellipse
    assert ax.apex[0] == pytest.approx(TOP, abs=0.5)
    assert ax.apex[1] == pytest.approx(centre_col, abs=2.5)  # the top is a flat pixel run
    assert ax.length_mm == pytest.approx(2 * a - CUT, abs=tol + 0.5)
    # diameters follow the ellipse: the widest disk is near the equator, about 2b
    assert ax.diameters_mm.shape == (clinical.N_DISKS,)
    assert ax.diameters_mm.max() == pytest.approx(2 * b, abs=0.6)
    assert np.all(np.diff(ax.diameters_mm[10:]) <= 0.5)  # narrowing towards the apex
    px = ax.to_pixels(SP_2CH)
    assert px["apex"][0] == pytest.approx(TOP / SP_2CH[0] - 0.5, abs=2)


def test_label_mask_and_boolean_mask_agree():
    a, b = 30.0, 15.0
    labelled = lv_slice(a, b, SP_4CH, myo=True)
    boolean = labelled == 1
    assert clinical.lv_long_axis(labelled, SP_4CH).length_mm == pytest.approx(
        clinical.lv_long_axis(boolean, SP_4CH).length_mm)


def _patient(ed, es):
    masks, spacings = {}, {}
    for phase, (a, b, c) in (("ED", ed), ("ES", es)):
        masks[("2CH", phase)] = lv_slice(a, b, SP_2CH)
        masks[("4CH", phase)] = lv_slice(a, c, SP_4CH)
        spacings[("2CH", phase)] = SP_2CH
        spacings[("4CH", phase)] = SP_4CH
    return masks, spacings


def test_ef_of_two_ellipsoids_and_step_modes():
    ed, es = (40.0, 20.0, 24.0), (34.0, 15.0, 18.0)
    masks, spacings = _patient(ed, es)
    per_phase = clinical.patient_indices(masks, spacings, step_mode="per_phase")
    edv, esv = truncated_volume(*ed), truncated_volume(*es)
    assert per_phase["missing"] == []
    assert per_phase["edv"] == pytest.approx(edv, rel=0.015)
    assert per_phase["esv"] == pytest.approx(esv, rel=0.02)
    assert per_phase["ef"] == pytest.approx(100 * (edv - esv) / edv, abs=1.5)
    ellipsoid_ef = 100 * (1 - (es[0] * es[1] * es[2]) / (ed[0] * ed[1] * ed[2]))
    assert per_phase["ef"] == pytest.approx(ellipsoid_ef, abs=2.0)
    # CAMUS convention: one step (the longest of the four axes) for ED and ES
    camus = clinical.patient_indices(masks, spacings)
    lengths = camus["lengths"]
    ratio = max(lengths.values()) / max(lengths["2CH/ES"], lengths["4CH/ES"])
    assert camus["edv"] == pytest.approx(per_phase["edv"], rel=1e-9)
    assert camus["esv"] == pytest.approx(per_phase["esv"] * ratio, rel=1e-9)
    assert camus["ef"] < per_phase["ef"]
    # the same long axis at ED and ES: both conventions agree with the ellipsoid EF
    masks_same, sp_same = _patient(ed, (40.0, 15.0, 18.0))
    same = clinical.patient_indices(masks_same, sp_same)
    assert same["ef"] == pytest.approx(100 * (1 - (15 * 18) / (20 * 24)), abs=1.5)


def test_simpson_explicit_step_scales_volume():
    m2, m4 = lv_slice(30, 15, SP_2CH), lv_slice(30, 18, SP_4CH)
    v1 = clinical.simpson_biplane(m2, m4, SP_2CH, SP_4CH, step=1.0)
    v2 = clinical.simpson_biplane(m2, m4, SP_2CH, SP_4CH, step=2.0)
    assert v2 == pytest.approx(2 * v1)


def test_missing_lv_is_flagged_or_raised():
    masks, spacings = _patient((30.0, 15.0, 18.0), (26.0, 11.0, 14.0))
    empty = np.zeros_like(masks[("4CH", "ES")])
    with pytest.raises(clinical.LVMissingError, match="empty"):
        clinical.lv_long_axis(empty, SP_4CH, name="4CH/ES")
    with pytest.raises(ValueError, match="4CH"):
        clinical.simpson_biplane(masks[("2CH", "ES")], empty, SP_2CH, SP_4CH)
    masks[("4CH", "ES")] = empty
    res = clinical.patient_indices(masks, spacings)
    assert res["missing"] == ["4CH/ES"]
    assert math.isfinite(res["edv"])
    assert math.isnan(res["esv"]) and math.isnan(res["ef"])
    with pytest.raises(clinical.LVMissingError):
        clinical.patient_indices(masks, spacings, on_missing="raise")
    del masks[("2CH", "ED")]
    assert "2CH/ED" in clinical.patient_indices(masks, spacings)["missing"]
    with pytest.raises(ValueError, match="step_mode"):
        clinical.patient_indices(masks, spacings, step_mode="nope")


def test_agreement_on_known_vectors():
    from scipy import stats

    pred = [1.0, 2.0, 3.0, 4.0, float("nan"), 8.0]
    ref = [1.0, 3.0, 2.0, 5.0, 7.0, float("nan")]
    out = clinical.agreement(pred, ref)
    assert out["n"] == 4
    assert out["bias"] == pytest.approx(-0.25)
    assert out["sd"] == pytest.approx(math.sqrt(2.75 / 3))
    assert out["mae"] == pytest.approx(0.75)
    assert out["corr"] == pytest.approx(stats.pearsonr([1, 2, 3, 4], [1, 3, 2, 5])[0])
    one = clinical.agreement([1.0], [2.0])
    assert one["n"] == 1 and one["bias"] == -1.0 and math.isnan(one["sd"]) and math.isnan(one["corr"])
    with pytest.raises(ValueError, match="agreement"):
        clinical.agreement([1, 2], [1, 2, 3])


def test_bland_altman_png_written(tmp_path, rng):
    from PIL import Image

    ref = rng.uniform(30, 70, size=25)
    pred = ref + rng.normal(1.0, 3.0, size=25)
    pred[3] = np.nan
    path = tmp_path / "plots" / "ef_bland_altman.png"
    stats = clinical.bland_altman_png(pred, ref, path, title="EF", unit="%")
    assert stats["n"] == 24
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert [p.name for p in path.parent.iterdir()] == ["ef_bland_altman.png"]
