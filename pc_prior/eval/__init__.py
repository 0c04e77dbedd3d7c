"""Evaluation harness: real coded rates, distortion, speed, BD-rates and plots.

The one evaluation path is ``evaluate_model`` (real bytes of ``compress()``, every image decoded,
PSNR and MS-SSIM on the decoded image, timings), written as CompressAI-format results JSON by
``results_json``/``write_json``; ``compare`` reads two such files into rate savings per quality
and BD-rates (``pc_prior.eval.compare.compare``: the submodule's name, so not re-exported here);
``run_demo`` is ``pc-prior demo``. The names load when first used (PEP 562), so the
command line's parser imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_LAZY = {
    "evaluate_image": "rd",
    "evaluate_model": "rd",
    "results_json": "rd",
    "write_json": "rd",
    "Curve": "compare",
    "bd_rate": "compare",
    "format_comparison": "compare",
    "load_curve": "compare",
    "plot_rd": "compare",
    "rate_savings": "compare",
    "run_demo": "demo",
    "lossless_table": "lossless_report",
}

if TYPE_CHECKING:
    from .compare import (
        Curve,
        bd_rate,
        format_comparison,
        load_curve,
        plot_rd,
        rate_savings,
    )
    from .demo import run_demo
    from .lossless_report import lossless_table
    from .rd import evaluate_image, evaluate_model, results_json, write_json

__all__ = [
    "Curve",
    "bd_rate",
    "evaluate_image",
    "evaluate_model",
    "format_comparison",
    "load_curve",
    "lossless_table",
    "plot_rd",
    "rate_savings",
    "results_json",
    "run_demo",
    "write_json",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
