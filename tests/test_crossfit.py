"""Cross-fitted calibration: the folds, the rule that picks it, the heads' out-of-fold scores
against brute force and against heads fitted fold by fold, the validation's routing of each
anomaly to its image's fold, and the whole fit."""

from __future__ import annotations

import pytest
import torch
from conftest import fold_routed_scores, tiny_config

from fod.config import ConfigError, FODConfig, legacy_config
from fod.errors import DataError
from fod.model import FODOutput, FODTransformer, LevelSpec, Variant
from fod.scoring.head import fit_head, model_outputs, raw_part_scores
from fod.scoring.normality import fit_gaussian, local_average
from fod.training import fit
from fod.training.crossfit import (
    crossfit_heads,
    fold_banks,
    fold_count,
    holdout_count,
    make_folds,
    out_of_fold_scores,
    resolve_calibration,
)


def test_folds_partition_the_images_evenly_and_are_seeded():
    folds = make_folds(23, 5, 3407)
    assert sorted(torch.cat(folds).tolist()) == list(range(23))
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    assert all(torch.equal(f, f.sort().values) for f in folds)
    again = make_folds(23, 5, 3407)
    assert all(torch.equal(a, b) for a, b in zip(folds, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(folds, make_folds(23, 5, 1), strict=True))
    with pytest.raises(ValueError, match="cannot split 3 images into 4 folds"):
        make_folds(3, 4, 0)


def test_fold_count_and_the_auto_rule():
    assert fold_count(50, 0.2) == 5
    assert fold_count(50, 0.5) == 2
    assert fold_count(3, 0.2) == 3  # each fold holds an image
    assert fold_count(50, 0.9) == 2
    assert holdout_count(50, 0.2) == 10 and holdout_count(3, 0.2) == 1
    # auto cross-fits while the slice would hold fewer than 20 images
    assert resolve_calibration("auto", 97, 0.2) == "crossfit"  # 19 held out
    assert resolve_calibration("auto", 98, 0.2) == "holdout"  # 20 held out
    assert resolve_calibration("auto", 761, 0.2) == "holdout"
    assert resolve_calibration("holdout", 10, 0.2) == "holdout"
    assert resolve_calibration("crossfit", 761, 0.2) == "crossfit"
    with pytest.raises(ValueError, match="calibration must be one of auto, holdout, crossfit"):
        resolve_calibration("kfold", 10, 0.2)


def test_config_key_default_legacy_and_error():
    # cross-fitted by default, on any number of images (auto, the default before, kept the
    # slice from 98 images on)
    assert FODConfig().calibration == "crossfit"
    assert resolve_calibration(FODConfig().calibration, 761, 0.2) == "crossfit"
    with pytest.raises(ConfigError, match="calibration must be one of auto, holdout, crossfit"):
        FODConfig(calibration="folds")
    old = FODConfig().to_dict()
    old.pop("calibration")
    # model files from before cross-fitting held out a slice
    assert FODConfig.from_dict(legacy_config(old)).calibration == "holdout"


def _level(n: int = 12, seed: int = 0) -> tuple[FODTransformer, torch.Tensor]:
    spec = LevelSpec(channels=5, height=3, width=3, d_model=8, heads=2, layers=1)
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 5, 3, 3, generator=g)
    model = FODTransformer(spec, Variant(), reference=features.mean(0, keepdim=True)).eval()
    return model, features


def test_output_rows_pick_every_field_of_the_chosen_images():
    g = torch.Generator().manual_seed(5)
    x, r, d = (torch.randn(6, 4, 3, generator=g) for _ in range(3))
    out = FODOutput(x, r, div_intra=d[..., 0])
    pick = torch.tensor([4, 1])
    got = out.rows(pick)
    assert torch.equal(got.tokens, x[pick]) and torch.equal(got.reconstruction, r[pick])
    assert torch.equal(got.div_intra, d[pick, :, 0]) and got.div_inter is None


def test_crossfit_runs_the_transformer_once_except_for_the_paper_part():
    model, features = _level(15, seed=3)
    config = tiny_config(head_parts=("residual", "nearest"), bank_size=60, seed=7)
    cf = crossfit_heads(config, [model], [features])
    out = model(features, div_branches=frozenset(), entropy=False)
    assert cf.outputs is not None
    assert torch.allclose(cf.outputs[0].tokens, out.tokens, atol=1e-6)
    assert torch.allclose(cf.outputs[0].reconstruction, out.reconstruction, atol=1e-6)
    for j, held in enumerate(cf.folds):  # the shared outputs score as a fresh pass does
        want = raw_part_scores(cf.fold_heads[j][0], model, features[held])
        assert torch.allclose(cf.raw[0][held], want, rtol=1e-5, atol=1e-5)
    # the paper part's scores need the transformer's correlations: each fit runs it
    paper = tiny_config(head_parts=("residual", "paper"), seed=7)
    cf = crossfit_heads(paper, [model], [features])
    assert cf.outputs is None
    for j, held in enumerate(cf.folds):
        want = raw_part_scores(cf.fold_heads[j][0], model, features[held])
        assert torch.allclose(cf.raw[0][held], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="paper part needs its scores"):
        raw_part_scores(cf.heads[0], model, features, outputs=model_outputs(model, features))


def test_out_of_fold_nearest_scores_match_brute_force():
    model, features = _level()
    config = tiny_config(head_parts=("nearest",), bank_size=10_000, holdout=0.25, seed=5)
    cf = crossfit_heads(config, [model], [features])
    tokens = features.flatten(2).transpose(1, 2)  # (N, L, C)
    raw = torch.empty(12, 9)
    for i in range(12):
        others = torch.cat([tokens[j] for j in range(12) if cf.fold_of[j] != cf.fold_of[i]])
        raw[i] = torch.cdist(tokens[i], others).min(1).values
    assert len(cf.folds) == 4
    head = cf.heads[0]
    assert float(head.center[0]) == pytest.approx(float(raw.mean()), rel=1e-5)
    assert float(head.scale[0]) == pytest.approx(float(raw.std()), rel=1e-5)
    want = ((raw - raw.mean()) / raw.std()).reshape(12, 1, 3, 3)
    assert torch.allclose(cf.scores[0], want, atol=1e-4)
    # the final head's bank holds every token; each fold's head only the other folds'
    assert head.bank.shape == (12 * 9, 5)
    for j, heads in enumerate(cf.fold_heads):
        assert heads[0].bank.shape == ((12 - len(cf.folds[j])) * 9, 5)
        assert torch.equal(heads[0].center, head.center) and torch.equal(heads[0].scale, head.scale)


def test_crossfit_heads_equal_heads_fitted_fold_by_fold():
    model, features = _level(15, seed=1)
    second, features2 = _level(15, seed=2)
    parts = ("residual", "nearest", "pooled")
    config = tiny_config(head_parts=parts, bank_size=60, pooled_bank_size=30, seed=7)
    cf = crossfit_heads(config, [model, second], [features, features2])
    assert len(cf.folds) == 5
    for level, (m, f) in enumerate(((model, features), (second, features2))):
        out = m(f, div_branches=frozenset(), entropy=False)
        tokens = out.tokens.detach()
        # the banks are selected once from every image (as a head fitted on all would)...
        every = fit_head(parts, m, f, f, 60, 7, pooled_bank_size=30)
        final = cf.heads[level]
        assert torch.equal(final.bank, every.bank)
        assert torch.equal(final.pooled_bank, every.pooled_bank)
        raw = torch.empty(15, 3, 9)
        shrinks = []
        for j, held in enumerate(cf.folds):
            rest = torch.tensor([i for i in range(15) if i not in set(held.tolist())])
            # ...and each fold keeps the entries that are tokens of its other folds' images
            banks = {
                "nearest": _entries_of(every.bank, tokens[rest]),
                "pooled": _entries_of(every.pooled_bank, local_average(tokens[rest], 3, 3, 3)),
            }
            assert 0 < len(banks["nearest"]) < 60 and 0 < len(banks["pooled"]) < 30
            head = fit_head(parts, m, f[rest], f[held], 60, 7, pooled_bank_size=30, banks=banks)
            shrinks.append(head.shrinkage["residual"])
            raw[held] = raw_part_scores(head, m, f[held])
            # each fold's head is that head, with the pooled calibration (its Gaussian up to
            # rounding: cross-fitting runs the transformer over all images at once, in other
            # batches)
            fold = cf.fold_heads[j][level]
            assert torch.equal(fold.bank, banks["nearest"])
            assert torch.equal(fold.pooled_bank, banks["pooled"])
            assert fold.shrinkage == head.shrinkage
            assert torch.allclose(fold.residual_mean, head.residual_mean, rtol=0, atol=1e-6)
            assert torch.allclose(fold.residual_precision, head.residual_precision, atol=1e-5)
        flat = raw.transpose(0, 1).reshape(3, -1)
        assert torch.allclose(final.center, flat.mean(1), rtol=1e-5)
        assert torch.allclose(final.scale, flat.std(1), rtol=1e-5)
        # the final Gaussian: every image's residuals, the folds' mean shrinkage
        assert final.shrinkage["residual"] == pytest.approx(sum(shrinks) / 5)
        r = (out.tokens - out.reconstruction).detach()
        mean, precision = fit_gaussian(r, shrink=sum(shrinks) / 5)
        assert torch.allclose(final.residual_mean, mean, atol=1e-5)
        assert torch.allclose(final.residual_precision, precision, rtol=1e-4, atol=1e-4)
        averaged = local_average(out.tokens.detach(), 3, 3, 3)
        assert final.pooled_bank.shape == (30, 5) and averaged.shape[1] == 9
        z = (raw - flat.mean(1).view(1, 3, 1)) / flat.std(1).view(1, 3, 1)
        assert torch.allclose(cf.scores[level], z.reshape(15, 3, 3, 3), atol=1e-4)


def _entries_of(bank: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The rows of ``bank``, in order, that equal one of ``tokens`` (N, L, C) (brute force)."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    return bank[[bool((flat == row).all(1).any()) for row in bank]]


def test_fold_banks_drop_the_folds_own_entries_and_omit_emptied_parts():
    entries = torch.arange(12.0).view(6, 2)
    banks = {
        "nearest": (entries, torch.tensor([0, 1, 2, 0, 1, 2])),
        "pooled": (entries[:1], torch.tensor([2])),
    }
    fold_of = torch.tensor([0, 1, 1])  # image 0 in fold 0, images 1 and 2 in fold 1
    zero = fold_banks(banks, fold_of, 0)
    assert torch.equal(zero["nearest"], entries[[1, 2, 4, 5]])
    assert torch.equal(zero["pooled"], entries[:1])
    one = fold_banks(banks, fold_of, 1)
    assert torch.equal(one["nearest"], entries[[0, 3]])
    assert "pooled" not in one  # its only entry came from fold 1: the head selects its own


def test_a_fold_whose_images_hold_the_whole_bank_selects_its_own():
    model, features = _level(6, seed=4)
    config = tiny_config(head_parts=("nearest",), bank_size=1, holdout=0.5, seed=2)
    cf = crossfit_heads(config, [model], [features])
    tokens = model(features, div_branches=frozenset(), entropy=False).tokens.detach()
    (entry,) = cf.heads[0].bank
    owner = [i for i in range(6) if bool((tokens[i] == entry).all(1).any())]
    assert len(owner) == 1
    for j, held in enumerate(cf.folds):
        bank = cf.fold_heads[j][0].bank
        assert bank.shape == (1, 5)
        # never a token of the fold's own images
        assert not any(bool((tokens[i] == bank[0]).all(1).any()) for i in held.tolist())


def test_out_of_fold_scores_route_each_row_to_its_group():
    model, features = _level(8, seed=3)
    config = tiny_config(head_parts=("feature", "nearest"), bank_size=50, holdout=0.5)
    cf = crossfit_heads(config, [model], [features])
    rows = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    groups = [torch.nonzero(rows == j).flatten() for j in range(2)]
    (got,) = out_of_fold_scores(cf.fold_heads, groups, [model], [features])
    for r in range(8):
        want = raw_part_scores(cf.fold_heads[int(rows[r])][0], model, features[r : r + 1])
        assert torch.allclose(got[r], want[0], atol=1e-5)
    # the fit's out-of-fold scores are the fold-routed scores of the images themselves
    (own,) = out_of_fold_scores(cf.fold_heads, cf.folds, [model], [features])
    assert torch.allclose(cf.raw[0], own)
    (oof,) = fold_routed_scores([model], cf.fold_heads, cf.fold_of, [features])
    assert torch.allclose(oof, cf.scores[0], atol=1e-4)


def test_fit_cross_fits_small_sets_and_trains_on_every_image():
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(12, 6, 4, 4, generator=g), torch.randn(12, 10, 2, 2, generator=g)]
    config = tiny_config(d_model=(8, 8), epochs=1, bank_size=40)
    result = fit(config, features, progress=False)  # auto: 2 held out < 20, so cross-fitted
    assert result.crossfit is not None and len(result.crossfit.folds) == 5
    assert torch.equal(result.fit_indices, torch.arange(12))
    assert torch.equal(result.holdout_indices, torch.arange(12))
    assert result.heads is result.crossfit.heads and result.holdout_scores is result.crossfit.scores
    # the inter reference is the mean of every image: the transformers train on all of them
    ref = result.models[0].reference
    assert torch.allclose(ref, features[0].mean(0, keepdim=True), atol=1e-6)
    # the segmenter's plain split: every fold but the first against the first
    seg_fit, seg_held = result.split()
    assert torch.equal(seg_held, result.crossfit.folds[0])
    assert sorted(seg_fit.tolist() + seg_held.tolist()) == list(range(12))
    held = fit(config.replace(calibration="holdout"), features, progress=False)
    assert held.crossfit is None and held.holdout_scores is None and len(held.holdout_indices) == 2
    # two images cannot be cross-fitted (each fold's heads would see one): refused before training
    with pytest.raises(DataError, match="only 2 good training image"):
        fit(config, [f[:2] for f in features], progress=False)


def test_cli_train_says_how_it_calibrated(generated, tmp_path, capsys):
    from conftest import GENERATED, tiny_args

    from fod.api import FOD
    from fod.cli.main import main

    n = GENERATED["n_train"]
    out = tmp_path / "m.pt"
    assert main(["train", str(generated), "--out", str(out), *tiny_args(epochs=1)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"calibrated on all {n} good images, each held out by one of 5 cross-fitted folds of heads"
    ) in printed
    model = FOD.load(out, device="cpu")
    assert model.config.calibration == "crossfit" and model.stats["calibration"] == "crossfit"
    # the shrinkage line names the weight kept and every weight tried with its synthetic AUROC
    shrinkage = model.stats["validation"]["shrinkage"]
    chosen = shrinkage["chosen"]
    name = "the likelihood's" if chosen == "likelihood" else f"{chosen:g}"
    first, *others = shrinkage["tried"]
    tried = ", ".join(
        [f"the likelihood's {first['image_auroc']:.4f}"]
        + [
            f"{t['shrinkage']:g} {t['image_auroc']:.4f} "
            f"({t['gain']:+.2g} +- {t['standard_error']:.2g})"
            for t in others
        ]
    )
    rule = shrinkage["rule"]
    assert f"Gaussian shrinkage: {name} ({rule}; synthetic image AUROC {tried})" in printed
    args = ["train", str(generated), "--out", str(out), "--force", "--calibration", "holdout"]
    assert main([*args, *tiny_args(epochs=1)]) == 0
    printed = capsys.readouterr().out
    held = round(0.2 * n)
    assert f"trained on {n - held} images" in printed
    assert f"calibrated on {held} held-out good images" in printed
    assert "cross-fitted" not in printed and "its image's fold" not in printed
    model = FOD.load(out, device="cpu")
    assert model.config.calibration == "holdout" and model.stats["folds"] == 0


def test_cross_fitted_fit_without_validation_sets_the_largest_out_of_fold_score(generated):
    from conftest import GENERATED

    from fod.api import FOD

    model = FOD(tiny_config(epochs=1, validation="none"), device="cpu", progress=False)
    stats = model.fit(generated).stats
    assert (stats["calibration"], stats["num_holdout"]) == ("crossfit", GENERATED["n_train"])
    assert "validation" not in stats
    # the threshold is the largest image score of the good images, each scored out of fold
    assert model.threshold == pytest.approx(stats["train_score_max"])
    assert stats["num_train"] == GENERATED["n_train"]
    # scored in-sample by the final heads (whose banks hold their tokens) they would all fall
    # below it: the calibration used the out-of-fold scores
    in_sample = [p.score for p in model.predict(generated / "train" / "good")]
    assert len(in_sample) == GENERATED["n_train"] and max(in_sample) < model.threshold
