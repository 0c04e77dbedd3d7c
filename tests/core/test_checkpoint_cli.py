import gzip
import json
import struct

import numpy as np
import pytest
import torch
from conftest import random_hclt

from pc_prior import CheckpointError, decode, encode, load, save
from pc_prior.cli import main
from pc_prior.coding import coding_tables
from pc_prior.data import load_idx, load_mnist
from pc_prior.files import write_file


def test_save_load_round_trip(tmp_path):
    pc = random_hclt(dtype=torch.float32)
    x = torch.randint(0, 3, (40, 6), generator=torch.Generator().manual_seed(0))
    data = encode(pc, x)
    save(pc, tmp_path / "m.pt", note="hello")
    pc2 = load(tmp_path / "m.pt")
    assert pc2.metadata["note"] == "hello"
    assert torch.equal(pc2.log_prob(x), pc.log_prob(x))
    assert torch.equal(decode(pc2, data), x)  # streams made before saving decode after loading
    assert encode(pc2, x) == data


def test_load_rejects_other_files_and_versions(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pc-prior"):
        load(tmp_path / "other.pt")
    save(random_hclt(), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    state["version"] = 99
    torch.save(state, tmp_path / "edited.pt")  # an edit without a new digest
    with pytest.raises(CheckpointError, match="does not match its digest"):
        load(tmp_path / "edited.pt")
    del state["digest"]
    write_file(state, tmp_path / "future.pt")  # a consistent file of another version
    with pytest.raises(CheckpointError, match="version 99"):
        load(tmp_path / "future.pt")
    state["version"] = 2
    torch.save(state, tmp_path / "undigested.pt")
    with pytest.raises(CheckpointError, match="no content digest"):
        load(tmp_path / "undigested.pt")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("config", {"num_cats": 2**31, "num_latents": 3}, "num_cats"),
        ("config", {"num_cats": 4, "num_latents": 0}, "num_latents"),
        ("config", {"num_cats": 4}, "config has keys"),
        ("circuit", "Pickle", "circuit 'Pickle'"),
        ("dtype", "bogus", "dtype 'bogus'"),
        ("dtype", "float64", "params.root_logits is torch.float32"),
        ("parent", [1, -1, 1, 0, 0], "params.transition_logits"),
        ("parent", [1, 2, 0, 0, 0, 2], "not a tree"),
        ("parent", "abc", "'parent' is a str"),
    ],
)
def test_load_checks_every_field_before_building(tmp_path, field, value, message):
    """Every field is checked, and sizes against the stored tensors (on the meta device) first."""
    save(random_hclt(dtype=torch.float32), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    del state["digest"]
    state[field] = value
    write_file(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message):
        load(tmp_path / "bad.pt")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t["emit"].neg_(), "emit has entries outside"),
        (lambda t: t.__setitem__("parent", t["parent"][:-1]), "trans has shape"),
        (lambda t: t.__setitem__("root", t["root"].double()), "root must be an integer tensor"),
        (lambda t: t.__setitem__("trans", t["trans"][:, :2]), "trans has shape"),
    ],
)
def test_load_validates_coding_tables(tmp_path, edit, message):
    save(random_hclt(dtype=torch.float32), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    del state["digest"]
    edit(state["coding_tables"])
    write_file(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message):
        load(tmp_path / "bad.pt")


def test_load_detects_a_flipped_byte_and_refuses_pickled_code(tmp_path):
    import os
    import pickle
    import zipfile

    save(random_hclt(dtype=torch.float32), tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as z:  # flip a byte inside a tensor's storage
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 16)
    raw = bytearray((tmp_path / "m.pt").read_bytes())
    name_len, extra_len = struct.unpack_from(
        "<HH", raw, info.header_offset + 26
    )  # local file header
    raw[info.header_offset + 30 + name_len + extra_len + 8] ^= 0x01
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        load(tmp_path / "flipped.pt")

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "pc-prior/hclt", "x": Evil()}, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(CheckpointError, match="weights-only"):
        load(tmp_path / "evil.pt")
    assert not marker.exists()


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())


@pytest.fixture
def tiny_idx(tmp_path):
    """An MNIST-format dataset of 4x4 images with structure (a bright blob that moves)."""
    g = np.random.default_rng(0)

    def images(n):
        out = np.zeros((n, 4, 4), dtype=np.uint8)
        r, c = g.integers(0, 3, n), g.integers(0, 3, n)
        out[np.arange(n), r, c] = 255
        out[np.arange(n), r + 1, c + 1] = g.integers(100, 256, n)
        return out

    root = tmp_path / "data"
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte.gz", images(300))
    _write_idx(root / "t10k-images-idx3-ubyte.gz", images(50))
    return root


def test_idx_loader_and_errors(tiny_idx, tmp_path):
    x = load_mnist(tiny_idx, "test")
    assert x.shape == (50, 16) and x.dtype == torch.long
    assert load_idx(tiny_idx / "t10k-images-idx3-ubyte.gz").shape == (50, 4, 4)
    with pytest.raises(FileNotFoundError, match="--data"):
        load_mnist(tmp_path / "nowhere", "train")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(ValueError, match="magic"):
        load_idx(tmp_path / "bad.gz")
    raw = gzip.decompress((tiny_idx / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(ValueError, match="expected"):
        load_idx(tmp_path / "short.gz")


def test_lossless_cli_fit_bench_compress_decompress(tiny_idx, tmp_path, capsys):
    ckpt = tmp_path / "hclt.pt"
    assert (
        main(
            [
                "lossless",
                "fit",
                "--data",
                str(tiny_idx),
                "-o",
                str(ckpt),
                "--latents",
                "4",
                "--epochs",
                "2",
                "--full-batch-epochs",
                "1",
                "--batch-size",
                "100",
                "--valid",
                "20",
            ]
        )
        == 0
    )
    fit_line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fit_line["checkpoint"] == str(ckpt) and ckpt.is_file()
    # --valid holds out the last training images; the test split is never seen by the fit
    fitted = load(ckpt)
    assert fitted.metadata["num_train"] == 300 - 20 and "valid_bpd" in fit_line
    # the saved tables are those of the saved parameters (the per-epoch save once kept epoch 1's)
    stored = coding_tables(fitted)
    fresh = coding_tables(fitted, refresh=True)
    for a, b in zip(
        (stored.root, stored.trans, stored.emit), (fresh.root, fresh.trans, fresh.emit)
    ):
        assert torch.equal(a, b)
    assert (
        main(["lossless", "fit", "--data", str(tiny_idx), "-o", str(ckpt), "--valid", "300"]) == 1
    )
    assert "--valid 300 must be at least 0 and leave training images" in capsys.readouterr().err

    assert main(["lossless", "bench", str(ckpt), "--data", str(tiny_idx)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("bpd_theoretical", "bpd_coded", "encode_seconds", "decode_seconds", "num_images"):
        assert key in res
    assert res["num_images"] == 50 and res["round_trip_exact"]
    assert res["bpd_theoretical"] <= res["bpd_coded"] < res["bpd_theoretical"] + 0.5

    arr = load_mnist(tiny_idx, "test").numpy().astype(np.uint8).reshape(50, 4, 4)
    np.save(tmp_path / "in.npy", arr)
    assert (
        main(
            [
                "lossless",
                "compress",
                str(tmp_path / "in.npy"),
                "--codec",
                str(ckpt),
                "-o",
                str(tmp_path / "c.bin"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "lossless",
                "decompress",
                str(tmp_path / "c.bin"),
                "--codec",
                str(ckpt),
                "-o",
                str(tmp_path / "out.npy"),
            ]
        )
        == 0
    )
    out = np.load(tmp_path / "out.npy")
    assert out.dtype == arr.dtype and np.array_equal(out, arr)

    # clear one-line errors, non-zero exit
    (tmp_path / "c.bin").write_bytes((tmp_path / "c.bin").read_bytes()[:-3])
    assert (
        main(
            [
                "lossless",
                "decompress",
                str(tmp_path / "c.bin"),
                "--codec",
                str(ckpt),
                "-o",
                str(tmp_path / "o.npy"),
            ]
        )
        == 1
    )
    assert "truncated" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), dtype=np.uint8))
    assert (
        main(
            [
                "lossless",
                "compress",
                str(tmp_path / "wrong.npy"),
                "--codec",
                str(ckpt),
                "-o",
                str(tmp_path / "w.bin"),
            ]
        )
        == 1
    )
    assert "expects 16" in capsys.readouterr().err

    # the old spellings (--model, the positional output) still work, with one warning each
    old = ["lossless", "compress", "--model", str(ckpt), str(tmp_path / "in.npy")]
    assert main([*old, str(tmp_path / "old.bin")]) == 0
    err = capsys.readouterr().err
    assert "--model is deprecated and goes in the next release; use --codec" in err
    assert "the positional OUTPUT is deprecated and goes in the next release; use --output" in err
    new = ["lossless", "compress", str(tmp_path / "in.npy"), "--codec", str(ckpt)]
    assert main([*new, "-o", str(tmp_path / "new.bin")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert (tmp_path / "old.bin").read_bytes() == (tmp_path / "new.bin").read_bytes()


@pytest.mark.parametrize("kind", ["DiscretizedLogisticTree", "ScaleConditionedTree"])
def test_every_circuit_saves_and_loads(tmp_path, kind):
    from pc_prior.continuous import DiscretizedLogisticTree, ScaleConditionedTree
    from pc_prior.structure import Tree

    torch.manual_seed(0)
    tree = Tree((-1, 0, 0, 1))
    if kind == "ScaleConditionedTree":
        pc = ScaleConditionedTree(tree, 3, num_scales=5)
        pc.init_params(seed=1)
    else:
        pc = DiscretizedLogisticTree(tree, 6, 3)
        pc.alphabet_n.fill_(5)
        pc.alphabet_lo.fill_(-2)
    with torch.no_grad():
        for p in pc.parameters():
            p.add_(torch.randn_like(p))
    save(pc, tmp_path / "c.pt", note="x")
    back = load(tmp_path / "c.pt")
    assert (
        type(back) is type(pc) and back.config() == pc.config() and back.metadata == {"note": "x"}
    )
    for (k, a), (_, b) in zip(pc.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    if kind == "DiscretizedLogisticTree":  # per-variable leaves: codes losslessly like an HCLT
        from pc_prior import decode, encode

        x = torch.randint(0, 6, (50, 4))
        assert torch.equal(decode(back, encode(pc, x)), x)
