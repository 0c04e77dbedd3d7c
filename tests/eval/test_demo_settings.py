"""``pc-prior demo`` and ``run_demo`` take their fit defaults from ``pc_prior.settings.DEMO_BOTTLENECK``."""

import dataclasses
import inspect

from pc_prior.cli import build_parser
from pc_prior.eval.demo import run_demo
from pc_prior.settings import DEMO_BOTTLENECK, BottleneckFit


def test_demo_defaults_are_the_demo_preset():
    p = inspect.signature(run_demo).parameters
    args = build_parser().parse_args(["demo"])
    d = DEMO_BOTTLENECK
    for ours, field in (
        ("latents", "num_latents"),
        ("structure", "structure"),
        ("epochs", "epochs"),
        ("max_items", "max_items"),
        ("seed", "seed"),
    ):
        assert p[ours].default == getattr(args, field) == getattr(d, field), ours
    assert p["full_batch_epochs"].default == d.full_batch_epochs
    # the preset is the defaults but for fewer epochs, one pass and 60k positions (the README's
    # demo table: 3 + 1, measured before the spatial context)
    assert (
        dataclasses.replace(
            d,
            epochs=BottleneckFit.epochs,
            full_batch_epochs=BottleneckFit.full_batch_epochs,
            context=BottleneckFit.context,
            max_items=BottleneckFit.max_items,
        )
        == BottleneckFit()
    )
    assert (d.context, d.max_items) == (None, 60000)
    assert (d.epochs, d.full_batch_epochs) == (3, 1)
