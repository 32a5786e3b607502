import numpy as np
import pytest

from pipeline.stages import report, verify

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


