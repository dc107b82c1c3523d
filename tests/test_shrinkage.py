"""The Gaussian parts' shrinkage chosen by the synthetic validation: refitted heads against
Gaussians, banks and calibrations computed directly, the choice of the best weight (ties to
the likelihood's), the config key, and the whole fit's report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fold_routed_scores, tiny_config

import fod.training.shrinkage as shrinkage
from fod.config import ConfigError, FODConfig, legacy_config
from fod.model import FODTransformer, LevelSpec, Variant
from fod.scoring.head import (
    fit_head,
    gaussian_inputs,
    model_outputs,
    raw_part_scores,
    with_shrinkage,
)
from fod.scoring.normality import fit_gaussian
from fod.training import fit
from fod.training.crossfit import fold_rests
from fod.training.shrinkage import (
    CANDIDATES,
    finalised,
    fit_moments,
    fitted,
    refitted,
    scored_rows,
)
from fod.training.validation import (
    auroc_standard_error,
    paired_auroc_gain,
    token_scores,
)


def _residuals(model: FODTransformer, features: torch.Tensor) -> torch.Tensor:
    out = model(features, div_branches=frozenset(), entropy=False)
    return (out.tokens - out.reconstruction).detach()


def _features(n: int = 14) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.randn(n, 6, 4, 4, generator=g), torch.randn(n, 10, 2, 2, generator=g)]


def test_with_shrinkage_refits_the_gaussian_and_keeps_the_rest():
    spec = LevelSpec(channels=5, height=3, width=3, d_model=8, heads=2, layers=1)
    features = torch.randn(12, 5, 3, 3, generator=torch.Generator().manual_seed(1))
    model = FODTransformer(spec, Variant(), reference=features.mean(0, keepdim=True)).eval()
    parts = ("residual", "feature", "nearest")
    head = fit_head(parts, model, features[:9], features[9:], 40, 3)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    copy = with_shrinkage(
        head, gaussian_inputs(head.parts, model_outputs(model, features[:9])), 0.3
    )
    # the Gaussians of the 9 fit images, shrunk by 0.3, computed directly
    mean, precision = fit_gaussian(_residuals(model, features[:9]), shrink=0.3)
    assert torch.allclose(copy.residual_mean, mean, atol=1e-6)
    assert torch.allclose(copy.residual_precision, precision, rtol=1e-5, atol=1e-5)
    tokens = features[:9].flatten(2).transpose(1, 2)
    mean, precision = fit_gaussian(tokens, shrink=0.3)
    assert torch.allclose(copy.feature_precision, precision, rtol=1e-5, atol=1e-5)
    assert copy.shrinkage == {"residual": 0.3, "feature": 0.3}
    # as fit_head with the weight given; the bank and the calibration are the head's
    given = fit_head(parts, model, features[:9], None, 40, 3, shrinkage=copy.shrinkage)
    assert torch.allclose(given.residual_precision, copy.residual_precision, atol=1e-6)
    assert torch.equal(copy.bank, head.bank) and torch.equal(copy.scale, head.scale)
    # and the head it copies is left as it was
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())
    assert head.shrinkage["residual"] != 0.3 or head.shrinkage["feature"] != 0.3


def test_refitted_slice_heads_are_calibrated_on_the_held_out_images():
    features = _features()
    config = tiny_config(d_model=(8, 8), epochs=1, bank_size=40, calibration="holdout")
    result = fit(config, features, progress=False)
    base = fitted(result)
    labels = torch.zeros(len(result.holdout_indices), dtype=torch.long)
    good = scored_rows(base, result.models, result.holdout, labels)
    every = [model_outputs(m, f) for m, f in zip(result.models, features, strict=True)]
    candidate = refitted(base, fit_moments(result, every, base.heads[0].parts), 1.0, good)
    assert candidate.shrinkage == 1.0 and candidate.fold_heads is None
    assert finalised(candidate, base, every) is candidate  # the slice's heads score new images
    for level, (model, f) in enumerate(zip(result.models, features, strict=True)):
        head = candidate.heads[level]
        _, precision = fit_gaussian(_residuals(model, f[result.fit_indices]), shrink=1.0)
        assert torch.allclose(head.residual_precision, precision, rtol=1e-5, atol=1e-5)
        assert torch.equal(head.bank, result.heads[level].bank)
        raw = raw_part_scores(head, model, result.holdout[level])
        flat = raw.transpose(0, 1).reshape(raw.shape[1], -1)
        assert torch.allclose(head.center, flat.mean(1), rtol=1e-5)
        assert torch.allclose(head.scale, flat.std(1), rtol=1e-5)
    want = token_scores(result.models, candidate.heads, result.holdout)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(candidate.scores, want, strict=True))


def test_refitted_cross_fitted_heads_fit_each_fold_on_the_others():
    features = _features(15)
    config = tiny_config(d_model=(8, 8), epochs=1, bank_size=40)
    result = fit(config, features, progress=False)
    assert result.crossfit is not None
    base = fitted(result)
    good = scored_rows(base, result.models, features, result.crossfit.fold_of)
    for a, b in zip(good.raw, result.crossfit.raw, strict=True):  # the fit's own, scored again
        assert torch.allclose(a, b, atol=1e-5)
    every = [model_outputs(m, f) for m, f in zip(result.models, features, strict=True)]
    candidate = finalised(
        refitted(base, fit_moments(result, every, base.heads[0].parts), 0.0, good), base, every
    )
    folds = result.crossfit.folds
    for level, (model, f) in enumerate(zip(result.models, features, strict=True)):
        raw = torch.empty(15, *raw_part_scores(candidate.heads[level], model, f[:1]).shape[1:])
        for j, rest in enumerate(fold_rests(folds)):
            head = candidate.fold_heads[j][level]
            _, precision = fit_gaussian(_residuals(model, f[rest]), shrink=0.0)
            assert torch.allclose(head.residual_precision, precision, rtol=1e-4, atol=1e-4)
            assert torch.equal(head.bank, result.crossfit.fold_heads[j][level].bank)
            raw[folds[j]] = raw_part_scores(head, model, f[folds[j]])
        _, precision = fit_gaussian(_residuals(model, f), shrink=0.0)
        final = candidate.heads[level]  # the heads for new images: every image's Gaussian
        assert torch.allclose(final.residual_precision, precision, rtol=1e-4, atol=1e-4)
        assert torch.equal(final.bank, result.heads[level].bank)
        assert torch.equal(final.center, candidate.fold_heads[0][level].center)
        flat = raw.transpose(0, 1).reshape(raw.shape[1], -1)
        assert torch.allclose(final.center, flat.mean(1), rtol=1e-5)
        assert torch.allclose(final.scale, flat.std(1), rtol=1e-5)
    oof = fold_routed_scores(result.models, candidate.fold_heads, result.crossfit.fold_of, features)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(candidate.scores, oof, strict=True))


@pytest.mark.parametrize(
    ("aurocs", "gains", "chosen"),
    [
        # the best of those clearly ahead of the likelihood's weight
        ((0.90, 0.95, 0.97, 0.96, 0.80), (0.05, 0.07, 0.06, -0.1), 0.2),
        # ahead, but within a standard error: the likelihood's stays
        ((0.90, 0.95, 0.97, 0.96, 0.80), (0.005, 0.007, 0.006, -0.1), "likelihood"),
        # the best is within its error, the second clearly ahead
        ((0.90, 0.95, 0.97, 0.93, 0.80), (0.05, 0.007, 0.03, -0.1), 0.0),
        # clearly ahead and equal: the first
        ((0.90, 0.95, 0.95, 0.93, 0.95), (0.05, 0.05, 0.03, 0.05), 0.0),
    ],
)
def test_a_weight_is_kept_only_when_clearly_ahead(monkeypatch, generated, aurocs, gains, chosen):
    from fod.api import FOD

    calls = []

    def rated(heads, *args, **kwargs):
        calls.append(heads)
        seen = len(calls) - 1  # each report's scores say which call made them
        scores = {"good": [float(seen)], "anomalous": [float(seen)]}
        return {"image_auroc": aurocs[seen], "seen": seen, "threshold": 1.0,
                "threshold_rule": "", "image_scores": scores}  # fmt: skip

    def gain(positives, negatives, base_positives, base_negatives):
        assert base_positives == [0.0] and base_negatives == [0.0]  # against the likelihood's
        return gains[int(positives[0]) - 1], 0.01

    monkeypatch.setattr(shrinkage, "validate", rated)
    monkeypatch.setattr(shrinkage, "paired_auroc_gain", gain)
    model = FOD(tiny_config(epochs=1, segmenter=False), device="cpu", progress=False)
    model.fit(generated)
    report = model.stats["validation"]
    tried = report["shrinkage"]["tried"]
    assert [t["shrinkage"] for t in tried] == ["likelihood", *CANDIDATES]
    assert [t["image_auroc"] for t in tried] == list(aurocs)
    assert [t["gain"] for t in tried[1:]] == list(gains)
    assert all(t["standard_error"] == 0.01 for t in tried[1:])
    assert report["shrinkage"]["chosen"] == chosen and "image_scores" not in report
    index = 0 if chosen == "likelihood" else 1 + CANDIDATES.index(chosen)
    assert report["seen"] == index
    if chosen == "likelihood":
        assert model.heads is calls[0]
    else:  # cross-fitted: the heads for new images are fitted with the chosen weight
        assert all(set(s.values()) == {chosen} for s in model.stats["head_shrinkage"])
        assert model.heads is not calls[0]


def test_paired_auroc_gain_against_loops_and_a_paired_bootstrap():
    rng = np.random.default_rng(0)
    good = rng.normal(size=60)
    anomalous = rng.normal(1.0, size=90)
    # a second scorer: the first plus a little noise, so the two agree on most images
    good2, anomalous2 = good + rng.normal(0, 0.3, 60), anomalous + rng.normal(0.1, 0.3, 90)
    gain, error = paired_auroc_gain(anomalous2, good2, anomalous, good)

    def auroc(pos, neg):
        return np.mean([[1.0 if p > n else 0.5 if p == n else 0.0 for n in neg] for p in pos])

    assert gain == pytest.approx(auroc(anomalous2, good2) - auroc(anomalous, good), abs=1e-12)
    boot = []
    for _ in range(400):
        i, j = rng.integers(0, 90, 90), rng.integers(0, 60, 60)
        boot.append(auroc(anomalous2[i], good2[j]) - auroc(anomalous[i], good[j]))
    assert error == pytest.approx(np.std(boot), rel=0.2)
    # far below the unpaired errors of the two AUROCs: the scorers agree on most images
    a = auroc(anomalous, good)
    assert error < 0.5 * auroc_standard_error(a, 90, 60)
    assert paired_auroc_gain(anomalous, good, anomalous, good) == (0.0, 0.0)
    # equal AUROCs from different placements: exactly no gain (averaging the placement
    # differences gave -4e-18 here)
    same = paired_auroc_gain([5, 3, 3, 1, 1, 0, 0], [0, 1, 4], [3, 5, 3, 3, 5, 4, 3], [3, 3, 5])
    assert auroc([5, 3, 3, 1, 1, 0, 0], [0, 1, 4]) == auroc([3, 5, 3, 3, 5, 4, 3], [3, 3, 5])
    assert same[0] == 0.0 and same[1] > 0
    with pytest.raises(ValueError, match="the same images of each kind"):
        paired_auroc_gain(anomalous[:5], good, anomalous, good)
    # one good image leaves no spread to estimate the error from
    one = paired_auroc_gain(anomalous2, good2[:1], anomalous, good[:1])
    assert one[0] == pytest.approx(auroc(anomalous2, good2[:1]) - auroc(anomalous, good[:1]))
    assert one[1] == float("inf")


def test_a_whole_fit_reports_what_it_tried_and_likelihood_validates_once(generated):
    from fod.api import FOD

    config = tiny_config(epochs=1, segmenter=False)
    model = FOD(config, device="cpu", progress=False).fit(generated)
    report = model.stats["validation"]
    tried = report["shrinkage"]["tried"]
    ahead = [t for t in tried[1:] if t["gain"] > t["standard_error"]]
    best = max(ahead, key=lambda t: t["image_auroc"]) if ahead else tried[0]
    assert report["image_auroc"] == best["image_auroc"]
    assert report["shrinkage"]["chosen"] == best["shrinkage"]
    for t in tried[1:]:  # each gain is the paired difference of the two synthetic AUROCs
        assert t["gain"] == pytest.approx(t["image_auroc"] - tried[0]["image_auroc"], abs=1e-9)
    # the likelihood's row is the validation that shrinkage="likelihood" runs alone
    alone = FOD(config.replace(shrinkage="likelihood"), device="cpu", progress=False)
    alone.fit(generated)
    assert "shrinkage" not in alone.stats["validation"]
    assert alone.stats["validation"]["image_auroc"] == pytest.approx(tried[0]["image_auroc"])


def test_config_key_default_legacy_and_error():
    assert FODConfig().shrinkage == "validation"
    assert FODConfig(validation="none").shrinkage == "likelihood"  # nothing to choose on
    assert FODConfig.paper().shrinkage == "likelihood"
    with pytest.raises(ConfigError, match="shrinkage must be one of validation, likelihood"):
        FODConfig(shrinkage="fixed")
    old = FODConfig().to_dict()
    old.pop("shrinkage")
    assert FODConfig.from_dict(legacy_config(old)).shrinkage == "likelihood"
