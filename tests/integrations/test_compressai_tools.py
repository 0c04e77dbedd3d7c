"""CompressAI interop (pc_prior.integrations.compressai_tools, compressai_checkpoints): PC-aware
from_state_dict, CompressAI's eval_model and update_model run on PC codec files through 'pc-prior
compressai', and CompressAI training checkpoints of PC codecs read by 'pc-prior eval'."""

import json
import math
from pathlib import Path

import pytest
import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from compressai.zoo.image import model_architectures
from helpers import fitted_hyperprior, make_pngs

from pc_prior.cli import main
from pc_prior.errors import CheckpointError, ModelLoadError
from pc_prior.images import list_images, load_image
from pc_prior.integrations import (
    PCConditional,
    PCEntropyBottleneck,
    fit_prior,
    load_codec,
    resolve_codec,
    save_codec,
)
from pc_prior.integrations.compressai_checkpoints import (
    fitting_architectures,
    pc_aware_class,
    pc_module_names,
)
from pc_prior.integrations.compressai_tools import pc_architectures, registered_architectures

pytest.importorskip("pytorch_msssim", reason="CompressAI's eval_model needs pytorch_msssim")
pytest.importorskip("torchvision", reason="CompressAI's eval_model needs torchvision")

ARCH = "bmshj2018-factorized"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny PC FactorizedPrior (N=8, M=12) fitted on its test images, saved as a pc-prior codec
    file; images: two 192x192 (multiples of 64) and one 168x200 (padded by both evaluators), all
    above MS-SSIM's 160 px that eval_model needs."""
    root = tmp_path_factory.mktemp("interop")
    images = make_pngs(root / "images", 2, size=(192, 192))
    make_pngs(root / "images" / "wide", 1, size=(168, 200), seed=1)
    (root / "images" / "wide" / "img00.png").rename(root / "images" / "wide" / "wide.png")
    torch.manual_seed(0)
    net = FactorizedPrior(N=8, M=12).eval()
    with torch.no_grad():  # multi-symbol latents from a random-init model
        net.g_a[-1].weight.mul_(40.0)
        net.g_a[-1].bias.mul_(40.0)
    fit_prior(
        net, [load_image(p) for p in list_images(images)], num_latents=2, epochs=1, progress=False
    )
    net.update(force=True)
    codec = save_codec(
        net, root / "tiny-pc.pth.tar", "FactorizedPrior", 1, net_kwargs={"N": 8, "M": 12}
    )
    return root, images, codec, net


def _pc_eval(capsys, model: Path, images: Path, out: Path, *extra: str) -> dict:
    assert (
        main(["eval", str(model), "--data", str(images), "-o", str(out), "--no-progress", *extra])
        == 0
    )
    capsys.readouterr()
    return json.loads(out.read_text())


def _strings(net: torch.nn.Module, x: torch.Tensor) -> list:
    with torch.no_grad():
        return net.compress(x)["strings"]


# -- 1. from_state_dict ----------------------------------------------------------------------------


def test_from_state_dict_swaps_the_pc_models_in(setup):
    _, images, _, net = setup
    sd = net.state_dict()
    assert pc_module_names(sd) == ["entropy_bottleneck"]
    with pytest.raises(RuntimeError, match="Unexpected key"):
        FactorizedPrior.from_state_dict(sd)  # CompressAI alone: the wall of keys
    loaded = pc_aware_class(FactorizedPrior).from_state_dict(sd).eval()
    assert isinstance(loaded, FactorizedPrior)
    assert isinstance(loaded.entropy_bottleneck, PCEntropyBottleneck)
    x = load_image(list_images(images)[0])
    assert _strings(loaded, x) == _strings(net, x)
    assert pc_aware_class(FactorizedPrior) is pc_architectures()[ARCH]  # one class per class
    plain = FactorizedPrior(N=8, M=12)
    plain.update(force=True)  # no PC keys: loads as into the plain class
    again = pc_aware_class(FactorizedPrior).from_state_dict(plain.state_dict())
    assert type(again.entropy_bottleneck).__name__ == "EntropyBottleneck"


@pytest.mark.parametrize(
    ("cls", "arch"),
    [(ScaleHyperprior, "bmshj2018-hyperprior"), (MeanScaleHyperprior, "mbt2018-mean")],
)
def test_from_state_dict_of_hyperpriors(cls, arch):
    net = fitted_hyperprior(cls, steps=5)
    sd = net.state_dict()
    assert pc_module_names(sd) == ["entropy_bottleneck", "gaussian_conditional"]
    loaded = pc_architectures()[arch].from_state_dict(sd).eval()
    assert isinstance(loaded.gaussian_conditional, PCConditional)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert _strings(loaded, x) == _strings(net, x)
    assert fitting_architectures(sd) == [arch]


def test_registration_only_inside_the_context():
    assert model_architectures[ARCH] is FactorizedPrior  # importing pc_prior registered nothing
    table = {"factorized-prior": FactorizedPrior, "other": object}
    with registered_architectures(table):
        assert model_architectures[ARCH] is pc_aware_class(FactorizedPrior)
        assert table == {"factorized-prior": pc_aware_class(FactorizedPrior), "other": object}
    assert model_architectures[ARCH] is FactorizedPrior
    assert table["factorized-prior"] is FactorizedPrior


# -- 2. CompressAI's eval_model and update_model ---------------------------------------------------


def test_eval_model_gives_the_bpp_of_pc_prior_eval(setup, tmp_path, capsys):
    _, images, codec, _ = setup
    threads = torch.get_num_threads()
    before = dict(model_architectures)  # (another test may have imported eval_model already)
    argv = ["checkpoint", str(images), "-a", ARCH, "-p", str(codec), "-d", str(tmp_path / "cai")]
    assert main(["compressai", "eval-model", *argv, "-o", "res", "--per-image"]) == 0
    capsys.readouterr()
    assert torch.get_num_threads() == threads  # eval_model sets 1 on import: restored
    assert model_architectures == before  # its VBR additions and our classes: undone
    cai = json.loads((tmp_path / "cai" / "res.json").read_text())
    ours = _pc_eval(capsys, codec, images, tmp_path / "pc.json")
    assert cai["results"]["bpp"][0] == pytest.approx(ours["results"]["bpp"][0], rel=1e-12, abs=0)
    per_image = {r["image"]: r["bpp"] for r in ours["per_image"][next(iter(ours["per_image"]))]}
    for path in list_images(images):
        rel = path.parent.relative_to(images)
        row = json.loads((tmp_path / "cai" / rel / f"{path.stem}-tiny-pc-ans.json").read_text())
        assert row["results"]["bpp"] == per_image[path.name]  # exactly: the same strings
    print(
        f"bpp: eval_model {cai['results']['bpp'][0]!r}, pc-prior eval {ours['results']['bpp'][0]!r}"
    )


def test_eval_model_verifies_the_digest_first(setup, tmp_path, capsys):
    _, images, codec, _ = setup
    obj = torch.load(codec, weights_only=True)
    key = "g_s.0.weight"
    obj["state_dict"][key] = obj["state_dict"][key] + 1  # same digest, other weights
    bad = tmp_path / "bad.pt"
    torch.save(obj, bad)
    out = tmp_path / "cai"
    argv = ["compressai", "eval-model", "checkpoint", str(images), "-a", ARCH, "-p", str(bad)]
    assert main([*argv, "-d", str(out), "-o", "r"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"pc-prior compressai eval-model: error: {bad} is corrupted or was modified: its content "
        "does not match its digest"
    )
    assert not (out / "r.json").exists()  # CompressAI never ran
    wrong = ["compressai", "eval-model", "checkpoint", str(images), "-a", "bmshj2018-hyperprior"]
    assert main([*wrong, "-p", str(codec)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "holds a FactorizedPrior (arch 'FactorizedPrior'), not the ScaleHyperprior of -a "
        "bmshj2018-hyperprior: pass -a bmshj2018-factorized"
    )
    assert "\n" not in err


def test_update_model_exports_what_both_evaluators_read(setup, tmp_path, capsys):
    _, images, codec, _ = setup
    out = tmp_path / "exported"
    assert main(["compressai", "update-model", str(codec), "-a", ARCH, "-d", str(out)]) == 0
    (export,) = out.glob("tiny-pc-*.pth.tar")
    assert f"wrote {export}" in capsys.readouterr().err
    assert model_architectures[ARCH] is FactorizedPrior
    sd = torch.load(export, weights_only=True)
    assert pc_module_names(sd) == ["entropy_bottleneck"]
    ours = _pc_eval(capsys, codec, images, tmp_path / "pc.json")
    exported = _pc_eval(capsys, export, images, tmp_path / "ex.json", "--arch", ARCH)
    assert exported["results"]["bpp"] == ours["results"]["bpp"]
    assert exported["name"] == f"{ARCH} + PC prior"
    argv = ["checkpoint", str(images), "-a", ARCH, "-p", str(export), "-d", str(tmp_path / "c")]
    assert main(["compressai", "eval-model", *argv, "-o", "r"]) == 0
    capsys.readouterr()
    cai = json.loads((tmp_path / "c" / "r.json").read_text())
    assert cai["results"]["bpp"][0] == pytest.approx(ours["results"]["bpp"][0], rel=1e-12, abs=0)


def test_help_is_ours_and_compressais_after_dashes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compressai", "eval-model", "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: pc-prior compressai eval-model [-h] [--]")
    with pytest.raises(SystemExit) as e:
        main(["compressai", "update-model", "--", "-h"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pc-prior compressai update-model -- ") and "filepath" in out


# -- 3. CompressAI training checkpoints ------------------------------------------------------------


def _training_checkpoint(net: torch.nn.Module, path: Path, epoch: int = 12) -> Path:
    """As CompressAI's examples/train.py saves one."""
    params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
    opt = torch.optim.Adam(params, lr=1e-4)
    aux = torch.optim.Adam([p for n, p in net.named_parameters() if n.endswith(".quantiles")])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min")
    torch.save(
        {
            "epoch": epoch,
            "state_dict": net.state_dict(),
            "loss": 1.5,
            "optimizer": opt.state_dict(),
            "aux_optimizer": aux.state_dict(),
            "lr_scheduler": sched.state_dict(),
        },
        path,
    )
    return path


def test_training_checkpoint_reads_with_its_arch(setup, tmp_path, capsys):
    _, images, codec, _ = setup
    ck = _training_checkpoint(load_codec(codec), tmp_path / "checkpoint.pth.tar")
    rc = resolve_codec(ck, arch=ARCH)
    assert isinstance(rc.net.entropy_bottleneck, PCEntropyBottleneck)
    assert rc.info == {"pc_modules": ["entropy_bottleneck"], "epoch": 12}
    ours = _pc_eval(capsys, codec, images, tmp_path / "pc.json")
    theirs = _pc_eval(capsys, ck, images, tmp_path / "ck.json", "--arch", ARCH)
    assert theirs["results"]["bpp"] == ours["results"]["bpp"]
    assert not math.isnan(theirs["results"]["bpp"][0])


def test_training_checkpoint_without_arch_is_one_line(setup, tmp_path, capsys):
    _, images, codec, _ = setup
    ck = _training_checkpoint(load_codec(codec), tmp_path / "checkpoint.pth.tar")
    assert main(["eval", str(ck), "--data", str(images), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"pc-prior eval: error: {ck} is a CompressAI training checkpoint (epoch 12) with PC "
        "entropy models (entropy_bottleneck), which does not name its architecture: its weights "
        f"fit {ARCH}: pass --arch {ARCH} (arch='{ARCH}')\n"
    )
    with pytest.raises(ModelLoadError) as e:
        resolve_codec(ck, arch="bmshj2018-hyperprior")
    msg = str(e.value)
    assert "\n" not in msg and "does not fit architecture bmshj2018-hyperprior" in msg
    assert msg.endswith(f"its weights fit {ARCH}: pass --arch {ARCH} (arch='{ARCH}')")


def test_training_checkpoint_with_a_changed_circuit_fails_to_load(setup, tmp_path):
    _, _, codec, _ = setup
    net = load_codec(codec)
    with torch.no_grad():
        net.entropy_bottleneck.pc.emission_logits[0, 0, 0, 0] += 3.0  # one probability
    sd = net.state_dict()
    sd["entropy_bottleneck._pc_tables_sha256"] = load_codec(codec).state_dict()[
        "entropy_bottleneck._pc_tables_sha256"
    ]  # the old digest with new parameters: no tables to code with
    for k in ("_pc_root", "_pc_trans", "_pc_emit"):
        sd.pop(f"entropy_bottleneck.{k}", None)
    torch.save({"epoch": 1, "state_dict": sd}, tmp_path / "ck.pth.tar")
    with pytest.raises(
        CheckpointError,
        match=r"has the layout of bmshj2018-factorized but does not load: .*SHA-256 mismatch",
    ):
        resolve_codec(tmp_path / "ck.pth.tar", arch=ARCH)


def test_load_codec_says_what_a_training_checkpoint_is(tmp_path):
    from compressai.models import FactorizedPrior

    from pc_prior import CheckpointError
    from pc_prior.integrations import load_codec

    net = FactorizedPrior(N=8, M=12)
    torch.save({"epoch": 3, "state_dict": net.state_dict(), "optimizer": {}}, tmp_path / "t.pth")
    with pytest.raises(
        CheckpointError, match=r"a CompressAI training checkpoint \(epoch 3\).*--arch"
    ):
        load_codec(tmp_path / "t.pth")
