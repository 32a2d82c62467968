"""The on-disk pair store renders what the in-memory cache renders, and leaves nothing behind."""

import numpy as np
import torch

from instascene.render import ContributionCache, Contributions
from instascene.render.pairs import PairStore


def random_contributions(rng, w=24, h=16, n=300, per_pixel=5) -> Contributions:
    pixel = np.repeat(np.arange(w * h), rng.integers(0, per_pixel + 1, w * h))
    gaussian = rng.integers(0, n, len(pixel))
    weight = rng.random(len(pixel)).astype(np.float32) * 0.3
    t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    return Contributions(w, h, n, t(pixel), t(gaussian), t(np.ones(len(pixel), np.float32)), t(weight))


def test_pair_store_renders_like_the_cache_and_cleans_up(tmp_path):
    rng = np.random.default_rng(0)
    contribs = [random_contributions(rng) for _ in range(3)]
    views = [type("V", (), {"width": c.width, "height": c.height})() for c in contribs]  # all the cache reads
    cache = ContributionCache.from_contributions(views, contribs)
    store = PairStore.temporary(tmp_path / "run", 300)
    for c in contribs:
        store.append(c)
    assert len(store) == 3 and store.n_gaussians == 300
    F1 = torch.randn(300, 16, dtype=torch.float32, requires_grad=True)
    F2 = F1.detach().clone().requires_grad_(True)
    pix = torch.from_numpy(rng.choice(24 * 16, 50, replace=False))
    for i in range(3):
        a = cache.render_pixels(i, F1, pix)
        b = store.render_pixels(i, F2, pix)
        assert torch.allclose(a, b, atol=1e-5)
        (a ** 2).sum().backward()
        (b ** 2).sum().backward()
        assert torch.allclose(F1.grad, F2.grad, atol=1e-4)
        p = store[i]
        assert torch.equal(p.pixel, contribs[i].pixel) and torch.equal(p.gaussian, contribs[i].gaussian)
        assert torch.allclose(p.weight, contribs[i].weight)
    assert [len(p.pixel) for p in store] == [len(c.pixel) for c in contribs]  # zip() and for-loops end
    folder = store.folder
    assert folder.parent == tmp_path and folder.name.startswith(".run.pairs-")
    store.close()
    assert not folder.exists()


def test_the_feature_field_reports_often_enough_for_a_prompt_cancel(tmp_path):
    """The service cancels a job at its next progress report: the feature stage reports
    every 5 steps (it reported every 50, so a cancel took 20-25 s), its loss text changing
    only every 50 so that the job log stays short."""
    from instascene.segment.features import FeatureParams, train_features

    rng = np.random.default_rng(1)
    contribs = [random_contributions(rng, 24, 16, 300) for _ in range(3)]
    store = PairStore.temporary(tmp_path / "run", 300)
    for c in contribs:
        store.append(c)
    labels2d = [rng.integers(0, 3, (16, 24)) for _ in contribs]
    calls = []
    train_features(store, labels2d, labels2d, rng.integers(-1, 2, 300), [np.arange(300)] * 3,
                   FeatureParams(iterations=60, samples=64), progress=lambda i, n, loss: calls.append((i, loss)))
    store.close()
    assert [i for i, _ in calls] == list(range(5, 61, 5))
    assert len({loss for _, loss in calls}) <= 2  # shown at step 5, then refreshed at step 50
