"""The synthetic generator: deterministic bytes, TGS-like coverage, salt visible in the image."""

from __future__ import annotations

import numpy as np
import pytest

from segnet.data import synthetic
from segnet.data.synthetic import generate
from segnet.data.tgs import read_dataset, validate


def _bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _bytes(generate(tmp_path / "a", n=12, seed=7, progress=False))
    b = _bytes(generate(tmp_path / "b", n=12, seed=7, progress=False))
    c = _bytes(generate(tmp_path / "c", n=12, seed=8, progress=False))
    assert a == b
    assert {"train.csv", "depths.csv", "SYNTHETIC"} <= set(a)
    assert sum(k.startswith("test/images/") for k in a) == 1
    assert a["train.csv"] != c["train.csv"]
    img_a = [v for k, v in a.items() if k.startswith("train/images/")]
    img_c = [v for k, v in c.items() if k.startswith("train/images/")]
    assert img_a != img_c


def test_images_are_independent_of_n(tmp_path):
    """Image i depends on (seed, i) only: a bigger dataset starts with the smaller one."""
    small = _bytes(generate(tmp_path / "s", n=5, seed=3, progress=False, n_test=0))
    big = _bytes(generate(tmp_path / "b", n=9, seed=3, progress=False, n_test=0))
    assert all(big[k] == v for k, v in small.items() if k.startswith("train/"))


@pytest.fixture(scope="module")
def synth400(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("s400") / "d", n=400, seed=1, progress=False)
    return read_dataset(root, progress=False)


def test_coverage_spread_like_tgs(synth400):
    _, m, _ = synth400
    cov = m.reshape(len(m), -1).mean(axis=1)
    empty = (cov == 0).mean()
    assert 0.32 < empty < 0.46  # TGS: 0.39
    assert 0.18 < cov.mean() < 0.33  # TGS: 0.25
    assert 0.01 < np.median(cov) < 0.12  # TGS: 0.055
    assert (cov > 0.9).sum() >= 5  # some near-full
    assert ((cov > 0) & (cov < 0.05)).sum() >= 10  # some small bodies
    assert cov.max() < 1.0 or (cov == 1.0).mean() < 0.05


def test_salt_is_visible(synth400):
    """Salt interiors are quiet (weak chaotic texture), sediments are layered: local contrast differs."""
    x, m, _ = synth400
    import cv2

    ratios = []
    for img, mask in zip(x[..., 0], m[..., 0], strict=True):
        inside = cv2.erode(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        outside = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) == 0
        if inside.sum() > 200 and outside.sum() > 200:
            grad = np.abs(np.diff(img, axis=0, append=img[-1:]))
            ratios.append(grad[inside].mean() / (grad[outside].mean() + 1e-6))
    assert len(ratios) > 50
    assert np.median(ratios) < 0.8


def test_generated_dataset_validates(tmp_path):
    s = validate(generate(tmp_path / "v", n=30, seed=0, progress=False, n_test=2))
    assert (s.n_images, s.n_test, s.kind) == (30, 2, "synthetic")


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.synth_image

    def flaky(rng):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("boom")
        return real(rng)

    monkeypatch.setattr(synthetic, "synth_image", flaky)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "out", n=10, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []
