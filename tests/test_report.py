import numpy as np
import pytest

from pipeline import report, verify
from pipeline.errors import PipelineInputError

PNG = b"\x89PNG\r\n\x1a\n"


def _parity(kl, per_class=()):
    return verify.ParityResult(
        images=len(kl), source="test", float_metrics={"top1": None, "top5": None},
        tflite_metrics={"top1": None, "top5": None}, agreement_top1=0.9,
        kl_mean=float(np.mean(kl)), snr_db=20.0, dominant_share={"float": 0.1, "tflite": 0.1},
        per_class=list(per_class), keras_check={}, skipped=[], checks=[],
        kl_per_image=np.asarray(kl))


@pytest.mark.parametrize("kl", [[0.0, 0.0], [0.01, 0.01, 0.01], [1e-9, 0.02, 3.0]])
def test_parity_plot_renders_any_kl_distribution(kl):
    rows = [{"class": "tench", "float_top1": 0.8, "tflite_top1": 0.7, "agreement_top1": 0.9}]
    for per_class in ((), rows):
        png = report.render_parity_plot(_parity(kl, per_class), "title")
        assert png[:8] == PNG and len(png) > 5000


def test_parity_plot_is_reproducible():
    parity = _parity([1e-4, 0.02, 0.3])
    assert report.render_parity_plot(parity, "t") == report.render_parity_plot(parity, "t")


def test_atomic_write_replaces_all_files_and_leaves_no_staging(tmp_path):
    out = tmp_path / "out"
    report.write_files_atomically(out, {"a.txt": "one", "b.bin": b"\x00\x01"})
    report.write_files_atomically(out, {"a.txt": "two", "b.bin": b"\x02"})
    assert (out / "a.txt").read_text() == "two" and (out / "b.bin").read_bytes() == b"\x02"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_write_leaves_previous_files(tmp_path):
    out = tmp_path / "out"
    report.write_files_atomically(out, {"a.txt": "old", "b.txt": "old"})
    with pytest.raises(TypeError):
        # The second file cannot be serialized: nothing may be replaced, nothing staged may remain.
        report.write_files_atomically(out, {"a.txt": "new", "b.txt": 12345})
    assert (out / "a.txt").read_text() == "old" and (out / "b.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_single_file_target(tmp_path):
    target = tmp_path / "model.tflite"
    report.write_files_atomically(target, {"": b"model"})
    assert target.read_bytes() == b"model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_check_writable_refuses_files_and_unwritable_places(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PipelineInputError, match="is a file"):
        report.check_writable(blocker)
    with pytest.raises(PipelineInputError, match="is a file"):
        report.check_writable(blocker / "sub" / "out")
    with pytest.raises(PipelineInputError, match="not writable"):
        report.check_writable("/proc/pipeline-test-out")
    report.check_writable(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # the check creates nothing
