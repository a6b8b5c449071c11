"""``python -m cardigan_tf.bench {pipeline,gan,seg,clinical,export,ensemble,qc}``: each benchmark runs with its
tiniest arguments and prints its figures in its documented format.

These are benchmark scripts: the tests check that every figure is printed (a number, in its
table), never how fast anything is.
"""

import math
import re

import pytest

from cardigan_tf.bench import __main__ as bench
from cardigan_tf.bench import export as bench_export

NUMBER = r"-?(?:\d+(?:\.\d*)?(?:e[+-]?\d+)?|inf|nan)"


def _run(argv, capsys):
    capsys.readouterr()
    assert bench.main(argv) == 0
    return capsys.readouterr().out


def _table(out, header_start):
    """Rows (lists of cells) of the markdown table whose header starts with ``header_start``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    assert re.fullmatch(r"\|(-*:?-+:?\|)+", lines[start + 1].replace("---:", "---")), lines[start + 1]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert rows and all(len(r) == len(header) for r in rows), (header, rows)
    return header, rows


def _positive(cell):
    value = float(cell)
    assert math.isfinite(value) and value > 0, cell
    return value


def test_lists_the_benchmarks(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    out = capsys.readouterr().out
    for name in ("pipeline", "gan", "seg", "clinical", "export", "ensemble", "qc"):
        assert name in out


def test_pipeline_prints_rates_and_its_table(capsys):
    out = _run(["pipeline", "--patients", "3", "--size", "32", "--batch-size", "2", "--batches", "2", "--warmup", "1",
                "--phantom-pairs", "4"], capsys)
    assert re.search(rf"^phantom generation 32x32: {NUMBER} pairs/s", out, re.M)
    assert re.search(r"^phantom \.h5 \(3 patients\) written in", out, re.M)
    for label in ("no augmentation", "augmentation"):
        assert re.search(rf"^pipeline 32x32, batch 2, {label}.*: {NUMBER} pairs/s wall \(4 pairs\); {NUMBER} ms CPU",
                         out, re.M), label
    header, rows = _table(out, "| measure (32x32, batch 2) |")
    assert [r[0] for r in rows] == ["phantom generation, one core",
                                    "phantom generation by patient (as datasets are written), one core",
                                    "pipeline, no augmentation", "pipeline, augmentation"]
    for r in rows:
        for cell in r[1:]:
            _positive(cell)


def test_pipeline_per_op_prints_one_line_per_op(capsys):
    out = _run(["pipeline", "--per-op", "--size", "32", "--batch-size", "2"], capsys)
    assert out.startswith("per-op timing, 32x32, batch 2, one TF thread;")
    ops = re.findall(rf"^(.+): ({NUMBER}) ms CPU per batch of 2 \(({NUMBER}) ms per pair\)$", out, re.M)
    assert len(ops) == 12 and len({name for name, _, _ in ops}) == 12
    assert {"augment_batch, default (pillow warp)", "augment_batch, default (tf warp)", "noise only"} <= \
        {name for name, _, _ in ops}
    for _, per_batch, per_pair in ops:
        assert float(per_pair) == pytest.approx(float(per_batch) / 2, abs=0.026)  # printed to 0.1 and 0.001 ms


def test_gan_prints_its_table_and_the_step_breakdown(capsys):
    # eager train steps: no train-step trace (the main job's GAN runs a traced one); the parts of
    # the breakdown and the FLOP counts are tf.functions all the same
    out = _run(["gan", "--presets", "tiny", "--steps", "1", "--warmup", "1", "--reps", "1", "--batch", "2",
                "--set", "model.size=32", "--set", "model.ngf=4", "--set", "model.ndf=4", "--set", "model.num_D=1",
                "--set", "model.hidden=8", "--set", "train.run_eagerly=true"], capsys)
    header, rows = _table(out, "| preset | size | batch |")
    assert header == ["preset", "size", "batch", "precision", "jit", "params_G", "params_D", "params_E",
                      "gflops_step_est", "step_s", "images_per_s"]
    (row,) = rows
    assert row[:3] == ["tiny", "32", "2"] and row[7] == "0"  # mask style: no encoder
    for cell in (row[5], row[6], row[8], row[9], row[10]):
        _positive(cell)
    assert re.search(r"^breakdown, tiny \(.*train_function traces: 2\)$", out, re.M)  # eager: train_step per step
    _, parts = _table(out, "| part | s | % of step |")
    assert [p[0] for p in parts] == ["G_fwd", "G_fwd_bwd", "D_fwd_bwd_2B", "EMA_update", "spade_shared_conv",
                                     "spade_gamma_beta_conv", "spade_norm_modulate", "block_convs",
                                     "spectral_norm_power_iter"]
    for p in parts:
        _positive(p[1])


def test_seg_prints_its_table_and_writes_it(capsys, tmp_path):
    md = tmp_path / "seg.md"
    out = _run(["seg", "--presets", "tiny", "--steps", "1", "--warmup", "1", "--train-batch", "2", "--infer-batches",
                "1", "2", "--markdown", str(md)], capsys)
    assert out.startswith("U-Net benchmark (")
    header, rows = _table(out, "| preset | input | params |")
    assert header == ["preset", "input", "params", "train img/s (batch 2)", "infer ms/img (batch 1)",
                      "infer ms/img (batch 2)"]
    (row,) = rows
    assert row[:2] == ["tiny", "64x64"] and re.fullmatch(rf"{NUMBER} M", row[2])
    for cell in row[3:]:
        _positive(cell)
    assert md.read_text().strip() in out


def test_ensemble_prints_single_and_ensemble_per_batch(capsys):
    out = _run(["ensemble", "--members", "2", "--tta", "gamma:0.9", "--batches", "1", "2", "--steps", "1", "--warmup",
                "1", "--set", "model.base_filters=4", "--set", "model.max_filters=8"], capsys)
    assert out.startswith("Ensemble benchmark: preset tiny, 2 members, views identity, gamma:0.9 (")
    header, rows = _table(out, "| batch | single ms/img |")
    assert header[3] == "ensemble (2 x 2 view(s)) ms/img" and [r[0] for r in rows] == ["1", "2"]
    for row in rows:
        single, ensemble, bound = (_positive(row[i]) for i in (1, 3, 5))
        assert math.isclose(bound, 2 * 2 * single * 1.2, rel_tol=0.01) and row[6] in ("yes", "NO")
        assert math.isclose(_positive(row[4]), ensemble / single, rel_tol=0.02)


def test_clinical_prints_one_row_per_case(capsys, tmp_path):
    md = tmp_path / "clinical.md"
    out = _run(["clinical", "--repeats", "1", "--markdown", str(md)], capsys)
    header, rows = _table(out, "| case (669x750 px, 4 masks) |")
    assert [r[0] for r in rows] == ["clean", "ragged 5 mm x 200", "ragged 10 mm x 200", "ragged 20 mm x 150",
                                    "label noise"]
    by_case = {r[0]: r for r in rows}
    for case in ("clean", "ragged 5 mm x 200"):  # a sensible LV: contour points, an EF, no reason
        points, seconds, ef, reason = by_case[case][1:]
        assert int(points) > 0 and 0 < float(ef) < 100 and reason == ""
        _positive(seconds)
    noise = by_case["label noise"]
    assert noise[1] == "0" and noise[3] == "nan" and noise[4]  # no sensible LV: NaN with a reason
    assert md.read_text().strip() in out


def test_export_prints_savedmodel_and_onnx_figures(capsys, monkeypatch):
    # the reference matmul at 256 instead of 4096 (the same code, 4096x fewer FLOPs)
    matmul = bench_export.matmul_gflops
    monkeypatch.setattr(bench_export, "matmul_gflops", lambda: matmul(n=256, steps=1))
    out = _run(["export", "--preset", "tiny", "--batches", "1", "2", "--steps", "1", "--warmup", "0"], capsys)
    m = re.search(rf"preset tiny U-Net 64x64, ({NUMBER}) GFLOP/image \(convolutions\); "
                  rf"ONNX max \|diff\| ({NUMBER})", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) <= 1e-4
    assert re.search(rf"^float32 4096x4096 matmul: {NUMBER} GFLOP/s$", out, re.M)
    header, rows = _table(out, "| batch | SavedModel ms/image |")
    assert [r[0] for r in rows] == ["1", "2"]
    for r in rows:
        for cell in r[1:]:
            _positive(cell)


def test_qc_prints_one_row_per_size_and_batch(capsys):
    out = _run(["qc", "--sizes", "32", "--batches", "1", "2", "--steps", "1", "--warmup", "0"], capsys)
    assert out.startswith("QC and uncertainty graphs vs the tiny U-Net (tensorflow ")
    header, rows = _table(out, "| input | batch | U-Net ms |")
    assert header[-3:] == ["uncertainty ms, M=1", "uncertainty ms, M=5", "QC hearts / U-Net"]
    assert [r[:2] for r in rows] == [["32x32", "1"], ["32x32", "2"]]
    for r in rows:
        for cell in r[2:]:
            _positive(cell)
