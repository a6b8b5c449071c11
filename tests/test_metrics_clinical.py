"""Tests of cardigan_tf.metrics.clinical: Simpson's biplane volumes of ellipsoids, EF, agreement.

Geometry of the test LV: an ellipsoid with semi-axes a (long axis, vertical, apex at the top),
b (seen in the 2CH slice) and c (4CH slice), cut flat ``CUT`` mm above its lower pole. The flat
cut plays the mitral plane: the method looks for a straight basal segment, which a full ellipse
does not have (its flattest stretch is on a flank, so the base would be found there). A 4 mm cap
holds 3h^2/(4a^2) - h^3/(4a^3) = 0.73 % of the ellipsoid, so comparing with 4/3 pi a b c within
2 % stays meaningful; the exact volume of the truncated ellipsoid is checked more tightly.
"""

import math

import contourpy
import numpy as np
import pytest
from PIL import Image
from scipy.stats import pearsonr

from cardigan_tf.bench.clinical import AXES, SPACING, make_patient
from cardigan_tf.metrics import clinical, long_axis
from cardigan_tf.viz import bland_altman_png


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


def test_ef_of_two_ellipsoids_and_simpson_conventions():
    ed, es = (40.0, 20.0, 24.0), (34.0, 15.0, 18.0)   # the LV shortens by 6 mm in systole
    masks, spacings = _patient(ed, es)
    res = clinical.patient_indices(masks, spacings)
    edv, esv = truncated_volume(*ed), truncated_volume(*es)
    assert res["simpson"] == "per_phase" == clinical.DEFAULT_SIMPSON
    assert res["missing"] == [] and res["reason"] == ""
    assert res["edv"] == pytest.approx(edv, rel=0.015)
    assert res["esv"] == pytest.approx(esv, rel=0.02)
    assert res["ef"] == pytest.approx(100 * (edv - esv) / edv, abs=1.0)
    ellipsoid_ef = 100 * (1 - (es[0] * es[1] * es[2]) / (ed[0] * ed[1] * ed[2]))
    assert res["ef"] == pytest.approx(ellipsoid_ef, abs=2.0)
    # CAMUS / vital convention: one disk height (the longest of the four axes / 20) for ED and
    # ES, recomputed here from the four views' disks
    camus = clinical.patient_indices(masks, spacings, simpson="camus")
    assert camus["simpson"] == "camus"
    axes = {k: clinical.lv_long_axis(m, spacings[k]) for k, m in masks.items()}
    step = max(a.length_mm for a in axes.values()) / clinical.N_DISKS
    for phase, key in (("ED", "edv"), ("ES", "esv")):
        d2, d4 = axes[("2CH", phase)].diameters_mm, axes[("4CH", phase)].diameters_mm
        assert camus[key] == pytest.approx(float(np.sum(d2 * d4)) * math.pi / 4 * step / 1000, rel=1e-9)
    lengths = camus["lengths"]
    ratio = max(lengths.values()) / max(lengths["2CH/ES"], lengths["4CH/ES"])
    assert ratio > 1.1
    assert camus["edv"] == pytest.approx(res["edv"], rel=1e-9)
    assert camus["esv"] == pytest.approx(res["esv"] * ratio, rel=1e-9)
    assert camus["ef"] < res["ef"] - 5   # the common step inflates ESV
    # the same long axis at ED and ES: both conventions agree with the ellipsoid EF
    masks_same, sp_same = _patient(ed, (40.0, 15.0, 18.0))
    for simpson in clinical.SIMPSON_CONVENTIONS:
        same = clinical.patient_indices(masks_same, sp_same, simpson=simpson)
        assert same["ef"] == pytest.approx(100 * (1 - (15 * 18) / (20 * 24)), abs=1.5)


def test_phase_volumes_conventions_on_known_disks():
    d = {("2CH", "ED"): [10.0, 20.0], ("4CH", "ED"): [10.0, 10.0],
         ("2CH", "ES"): [5.0, 10.0], ("4CH", "ES"): [4.0, 4.0]}
    lengths = {("2CH", "ED"): 80.0, ("4CH", "ED"): 60.0, ("2CH", "ES"): 40.0, ("4CH", "ES"): 50.0}
    per = clinical.phase_volumes(d, lengths)
    edv = (100 + 200) * math.pi / 4 * 80 / 2 / 1000
    esv = (20 + 40) * math.pi / 4 * 50 / 2 / 1000
    assert per == pytest.approx({"edv": edv, "esv": esv, "ef": 100 * (edv - esv) / edv, "simpson": "per_phase"})
    camus = clinical.phase_volumes(d, lengths, simpson="camus")
    assert camus["esv"] == pytest.approx(esv * 80 / 50)
    del d[("4CH", "ES")]
    part = clinical.phase_volumes(d, lengths)
    assert part["edv"] == pytest.approx(edv) and math.isnan(part["esv"]) and math.isnan(part["ef"])
    with pytest.raises(ValueError, match="simpson"):
        clinical.phase_volumes(d, lengths, simpson="vital")


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
    assert res["reason"].startswith("4CH/ES: ") and "empty" in res["reason"]
    del masks[("2CH", "ED")]
    res = clinical.patient_indices(masks, spacings)
    assert "2CH/ED" in res["missing"] and "2CH/ED: no mask" in res["reason"]
    with pytest.raises(ValueError, match="simpson"):
        clinical.patient_indices(masks, spacings, simpson="nope")


def _brute_force_base_length(pts, tol, centroid_row):
    """Longest valid base chord by testing every arc point of every chord (cubic, reference)."""
    m, best = len(pts), 0.0
    for i in range(m):
        for t in range(1, m // 2 + 1):
            q = pts[(i + t) % m] - pts[i]
            length = math.hypot(*q)
            if not (abs(q[0]) <= abs(q[1]) and pts[i, 0] + q[0] / 2 >= centroid_row and length > best):
                continue
            arc = pts[(i + np.arange(1, t)) % m] - pts[i]
            if np.abs(arc[:, 0] * q[1] - arc[:, 1] * q[0]).max(initial=0.0) / length <= tol:
                best = length
    return best


@pytest.mark.parametrize("seed", range(12))
def test_base_search_matches_brute_force_on_ragged_contours(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(20, 70))
    th = np.sort(rng.uniform(0, 2 * np.pi, m))
    r = 10 + rng.normal(0, (0.3, 1.0, 3.0)[seed % 3], m)
    pts = np.stack([r * np.sin(th), r * np.cos(th)], axis=1)
    if seed % 2 == 0:
        pts[:, 0] = np.minimum(pts[:, 0], 6.0)   # a flat base
    tol = (0.5, 1.25, 2.5)[seed % 4 % 3]
    centroid_row = float(pts[:, 0].mean())
    ij = long_axis._find_base(pts, tol, centroid_row)
    found = 0.0 if ij is None else math.hypot(*(pts[ij[1]] - pts[ij[0]]))
    assert found == pytest.approx(_brute_force_base_length(pts, tol, centroid_row), abs=1e-9)


def test_bad_masks_give_nan_and_a_reason():
    masks, spacings = _patient((30.0, 15.0, 18.0), (26.0, 11.0, 14.0))
    good = masks[("2CH", "ED")]
    rr, cc = np.nonzero(good == 1)
    r0, r1, c0, c1 = rr.min(), rr.max(), cc.min(), cc.max()
    rm, cm = (r0 + r1) // 2, (c0 + c1) // 2
    two = good.copy()
    two[rm - 2:rm + 3] = 0                        # cut in two halves
    holed = good.copy()
    holed[rm - 15:rm + 15, cm - 8:cm + 8] = 0     # a large hole
    speck = good.copy()
    speck[r0:r0 + 2, c1 + 3:c1 + 5] = 1           # 4 stray pixels: dropped, still measured
    cut_off = good[r0 + 20:]                      # the apex out of the field of view
    cases = {"separate pieces": two, "holes": holed, "image border": cut_off,
             "empty": np.zeros_like(good), "2-D mask": np.stack([good, good])}
    for expected, bad in cases.items():
        assert expected in clinical.lv_mask_problem(bad), expected
        with pytest.raises(clinical.LVMissingError, match=expected):
            clinical.lv_long_axis(bad, SP_2CH, name="2CH/ED")
        res = clinical.patient_indices({**masks, ("2CH", "ED"): bad}, spacings)
        assert res["reason"].startswith("2CH/ED: ") and expected in res["reason"], res["reason"]
        assert res["missing"] == ["2CH/ED"]
        assert math.isnan(res["edv"]) and math.isnan(res["ef"]) and math.isfinite(res["esv"])
    assert clinical.lv_mask_problem(speck) == clinical.lv_mask_problem(good) == ""
    assert clinical.lv_long_axis(speck, SP_2CH).length_mm == pytest.approx(
        clinical.lv_long_axis(good, SP_2CH).length_mm)


def test_noisy_random_masks_at_camus_size_give_nan_with_reason(rng):
    masks = {(v, p): rng.integers(0, 4, (669, 750)).astype(np.uint8) for v in ("2CH", "4CH")
             for p in ("ED", "ES")}
    spacings = {k: (0.154, 0.308) for k in masks}
    res = clinical.patient_indices(masks, spacings)
    assert math.isnan(res["edv"]) and math.isnan(res["esv"]) and math.isnan(res["ef"])
    assert sorted(res["missing"]) == ["2CH/ED", "2CH/ES", "4CH/ED", "4CH/ES"]
    assert res["reason"].count("separate pieces") == 4


def test_ragged_lv_with_long_contour_at_camus_size():
    """Fringed outlines (a ragged prediction): thousands of contour points, still measured."""
    clean = clinical.patient_indices(*make_patient(0.0, 0))
    masks, spacings = make_patient(10.0, 200)
    m = masks[("4CH", "ED")]
    outline = max(contourpy.contour_generator(z=m.astype(float)).lines(0.5), key=len)
    assert len(outline) > 5000                      # the premise: a long pixel contour
    assert m.shape == (669, 750) and clinical.lv_mask_problem(m) == ""
    res = clinical.patient_indices(masks, spacings)
    assert res["reason"] == "" and res["missing"] == []
    # the fingers are +-10 mm around the clean outline: the axes stay within the fringe
    for key, length in res["lengths"].items():
        assert length == pytest.approx(clean["lengths"][key], abs=10.0), key
    assert res["edv"] > res["esv"] > 0
    assert res["ef"] == pytest.approx(clean["ef"], abs=10.0)
    a_ed, a_es = AXES["ED"], AXES["ES"]
    assert clean["ef"] == pytest.approx(100 * (1 - np.prod(a_es) / np.prod(a_ed)), abs=3.0)
    assert SPACING == (0.154, 0.308)


def test_patients_indices_progress_hook():
    patients = {"p1": _patient((30.0, 15.0, 18.0), (26.0, 11.0, 14.0)),
                "p2": ({}, {})}
    calls = []
    out = clinical.patients_indices(patients, progress=lambda done, total, pid: calls.append((done, total, pid)))
    assert calls == [(1, 2, "p1"), (2, 2, "p2")]
    assert list(out) == ["p1", "p2"]
    assert out["p1"] == clinical.patient_indices(*patients["p1"])
    assert math.isnan(out["p2"]["ef"]) and out["p2"]["reason"].count("no mask") == 4
    lazy = clinical.iter_patient_indices([("p1", *patients["p1"])], simpson="camus")
    pid, res = next(lazy)
    assert pid == "p1" and res["simpson"] == "camus"


def test_agreement_on_known_vectors():
    pred = [1.0, 2.0, 3.0, 4.0, float("nan"), 8.0]
    ref = [1.0, 3.0, 2.0, 5.0, 7.0, float("nan")]
    out = clinical.agreement(pred, ref)
    assert out["n"] == 4
    assert out["bias"] == pytest.approx(-0.25)
    assert out["sd"] == pytest.approx(math.sqrt(2.75 / 3))
    assert out["mae"] == pytest.approx(0.75)
    assert out["corr"] == pytest.approx(pearsonr([1, 2, 3, 4], [1, 3, 2, 5])[0])
    one = clinical.agreement([1.0], [2.0])
    assert one["n"] == 1 and one["bias"] == -1.0 and math.isnan(one["sd"]) and math.isnan(one["corr"])
    with pytest.raises(ValueError, match="agreement"):
        clinical.agreement([1, 2], [1, 2, 3])


def test_bland_altman_png_written(tmp_path, rng):
    ref = rng.uniform(30, 70, size=25)
    pred = ref + rng.normal(1.0, 3.0, size=25)
    pred[3] = np.nan
    path = tmp_path / "plots" / "ef_bland_altman.png"

    stats = bland_altman_png(pred, ref, path, title="EF", unit="%")
    assert stats["n"] == 24
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert [p.name for p in path.parent.iterdir()] == ["ef_bland_altman.png"]
