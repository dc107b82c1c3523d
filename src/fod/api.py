"""The Python API: fit on good images, test on a labelled set, predict on any images.

>>> model = fod.FOD(image_size=128, epochs=5, batch_size=8)    # any FODConfig field
>>> model.fit("data/bottle")                  # a category folder, a Category, or good images
>>> results = model.test("data/bottle", report_dir="report")   # metrics + per-image scores
>>> preds = model.predict(["a.png", "folder/"])                 # score, decision, heat map
>>> model.save("bottle.pt"); model = fod.FOD.load("bottle.pt")

Decision threshold: chosen without test labels. By default (calibrated head, synthetic
validation) the held-out good images, which the model never trained on, and synthetic
anomalies made on them are scored, and the threshold is the held-out score that best separates
the two (:mod:`fod.training.validation`). With ``validation="none"`` it is the largest
held-out score; with the paper's head, the largest score of the training images themselves
(whose scores sit a little lower than unseen good images'). Pass ``threshold=`` (to the
constructor, :meth:`FOD.predict`, or set ``model.threshold``) to choose your own operating
point. The 1st and 99th percentiles of the same images' pixel scores are kept too, and fix the
colour scale of every heat map (blue: like good parts; red: above 99 % of their pixels), so
heat maps are comparable across images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch
from torch import Tensor

from fod.config import ConfigError, FODConfig, make_config
from fod.data import Category, Sample, image_files, load_batch, load_category, training_samples
from fod.data.images import load_image, resize_image
from fod.devices import resolve_device
from fod.errors import DataError, FODError
from fod.model import FODTransformer

if TYPE_CHECKING:
    from fod.backbone import FeatureExtractor
    from fod.scoring import Detector
    from fod.scoring.head import CalibratedHead
    from fod.scoring.segmenter import AnomalySegmenter

#: What :meth:`FOD.fit` trains on: a Category, a category folder or a folder of good images,
#: or a list of image files and folders.
TrainingData: TypeAlias = Category | str | Path | Sequence[str | Path]


class NotFittedError(FODError, RuntimeError):
    """A model used before :meth:`FOD.fit` or :meth:`FOD.load`."""


@dataclass
class Prediction:
    """One image's result: ``heatmap`` is the unblurred S x S pixel score map (float32)."""

    path: Path
    score: float
    anomalous: bool
    heatmap: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "score": self.score, "anomalous": self.anomalous}


def _test_category(
    data: Category | str | Path, layout: str | None, require_masks: bool = True
) -> Category:
    if isinstance(data, Category):
        return data
    return load_category(data, layout, require_masks=require_masks)


def _threshold(value: object) -> float:
    """A decision threshold: any finite number (NaN would call every image normal)."""
    from fod.training.finite import is_finite_number

    if not is_finite_number(value):
        raise ConfigError(f"threshold must be a finite number, got {value!r}")
    return float(value)


class FOD:
    """Focus the Discrepancy anomaly detector: one model per product (category).

    ``config`` or keywords set any :class:`~fod.config.FODConfig` field (and the
    :class:`~fod.model.Variant` switches ``intra``, ``inter``, ``entropy``, ``reference``,
    ``coreset_size``, ``score``, ``output_projection``). ``device``: "auto", "cpu" or "cuda".
    ``threshold`` overrides the calibrated decision threshold. ``cache_dir`` keeps backbone
    features on disk between runs. ``progress`` shows progress bars. ``precision``: fp32, or
    bf16 / fp16 autocast of the transformers during training (:mod:`fod.precision`).

    Under torchrun (:mod:`fod.distributed`), :meth:`fit` is data-parallel: each rank computes
    the features of its share of the images and trains on its share of every batch.
    """

    def __init__(
        self,
        config: FODConfig | dict[str, Any] | None = None,
        *,
        device: str | torch.device = "auto",
        threshold: float | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        precision: str = "fp32",
        **options: Any,
    ) -> None:
        from fod.precision import check_precision

        self.config = make_config(config, **options)
        self.precision = check_precision(precision)
        self.device = resolve_device(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.threshold: float | None = None if threshold is None else _threshold(threshold)
        self._user_threshold = threshold is not None
        self.stats: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.backbone: FeatureExtractor | None = None
        self.levels: list[FODTransformer] | None = None
        self.heads: list[CalibratedHead] | None = None
        self.segmenter: AnomalySegmenter | None = None
        self._detector: Detector | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        return (
            f"FOD({state}, backbone={self.config.backbone!r}, image_size="
            f"{self.config.image_size}, device={str(self.device)!r}, threshold={self.threshold})"
        )

    # ------------------------------------------------------------------ state

    @property
    def is_fitted(self) -> bool:
        return self.levels is not None and self.backbone is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                "this FOD model is not trained yet: call fit(data) or FOD.load(path) first"
            )

    @property
    def detector(self) -> Detector:
        """The :class:`~fod.scoring.Detector` (backbone + levels), on this model's device."""
        from fod.scoring import Detector

        self._require_fitted()
        if self._detector is None:
            self._detector = Detector(
                self.backbone,
                self.levels,
                self.config.image_size,
                heads=self.heads,
                segmenter=self.segmenter,
            )
            self._detector.to(self.device)
        return self._detector

    @property
    def heatmap_range(self) -> tuple[float | None, float | None]:
        """(vmin, vmax) of heat-map colours: percentiles 1 and 99 of training pixel scores."""
        return self.stats.get("pixel_p1"), self.stats.get("pixel_p99")

    def _backbone(self) -> FeatureExtractor:
        from fod.backbone import create_backbone

        if self.backbone is None:
            c = self.config
            self.backbone = create_backbone(c.backbone, c.weights, c.layers)
            c.check_levels(len(self.backbone.channels), c.backbone)
        return self.backbone

    # ------------------------------------------------------------------ fit

    def features(self, samples: Sequence[Sample]) -> list[Tensor]:
        """Backbone features of ``samples`` (from the cache when ``cache_dir`` is set)."""
        from fod.training import FeatureCache
        from fod.training.features import gathered_features

        backbone = self._backbone()
        cache = FeatureCache(self.cache_dir) if self.cache_dir is not None else None
        return gathered_features(
            backbone,
            samples,
            self.config.image_size,
            device=self.device,
            progress=self.progress,
            cache=cache,
        )

    def fit(
        self,
        data: TrainingData,
        *,
        layout: str | None = None,
        state_path: str | Path | None = None,
        resume: bool = False,
    ) -> FOD:
        """Train on the good images of ``data`` and calibrate the threshold on them.

        ``data``: a category folder (MVTec AD, BTAD or MVTec 3D-AD layout; its test split is
        not used), a :class:`~fod.data.Category`, a folder of good images, or a list of image
        files and folders. ``state_path`` saves a training state after every epoch;
        ``resume=True`` continues from it.
        """
        from fod import distributed
        from fod.io import check_not_input, check_writable
        from fod.training import fit

        _, samples = training_samples(data, layout)

        def check_outputs() -> None:  # before the backbone runs: a refusal costs nothing
            if self.cache_dir is not None:
                check_writable(self.cache_dir, folder=True)
            if state_path is not None:
                check_writable(state_path)
                check_not_input(state_path, [s.image for s in samples], "a training image")

        distributed.on_main(check_outputs)  # rank 0 writes them
        t0 = time.perf_counter()
        features = self.features(samples)
        seconds_features = time.perf_counter() - t0
        result = fit(
            self.config, features, state_path, resume, self.progress, self.device, self.precision
        )
        self.levels = result.models
        self.heads = result.heads
        self.history = result.history
        self.segmenter = None
        self._detector = None
        segmenter_report = None
        if result.heads is not None and self.config.segmenter:
            from fod.training.segmenter import fit_model_segmenter

            self.segmenter, segmenter_report = fit_model_segmenter(
                self._backbone(), samples, features, result, self.config, self.device, self.progress
            )
        report, held_scores = None, result.holdout_scores
        if result.heads is not None and self.config.validation == "synthetic":
            from fod.training.shrinkage import validate_shrinkage

            chosen, report = validate_shrinkage(
                self.config, result, features, self._backbone(), samples, self.device
            )
            self.heads, held_scores = chosen.heads, chosen.scores
        self._calibrate(result.holdout if result.heads is not None else features, held_scores)
        if segmenter_report is not None:
            self.stats["segmenter"] = segmenter_report
        if report is not None:
            self.stats["validation"] = report
            self.stats["threshold_rule"] = report["threshold_rule"]
            if not self._user_threshold:
                self.threshold = report["threshold"]
        n = int(features[0].shape[0])
        self.stats["num_train"] = len(result.fit_indices) if result.fit_indices is not None else n
        self.stats["num_holdout"] = len(result.holdout_indices) if result.heads is not None else 0
        if result.heads is not None:
            folds = result.crossfit.folds if result.crossfit is not None else []
            self.stats["calibration"] = "crossfit" if folds else "holdout"
            self.stats["folds"] = len(folds)
        if self.heads is not None:
            self.stats["head_shrinkage"] = [dict(h.shrinkage) for h in self.heads]
        self.stats["feature_seconds"] = seconds_features
        self.stats["train_seconds"] = float(sum(h.get("seconds", 0.0) for h in self.history))
        return self

    def _calibrate(self, features: list[Tensor], scores: list[Tensor] | None = None) -> None:
        """Threshold and heat-map range from good images' scores: the held-out ones with the
        calibrated head, the training images with the paper's (``scores``: their token
        scores where the validation computed them)."""
        from fod.scoring import calibrate

        self._require_fitted()
        assert self.levels is not None
        self.stats = calibrate(
            self.levels,
            features,
            self.config.image_size,
            self.device,
            heads=self.heads,
            segmenter=self.segmenter,
            token_scores=scores,
        )
        if not self._user_threshold:
            self.threshold = self.stats["train_score_max"]

    # ------------------------------------------------------------------ scoring

    def score(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) RGB in [0, 1] -> heat maps (B, S, S) and image scores (B,), on CPU."""
        maps, scores = self.detector(images.to(self.device))
        return maps.cpu(), scores.cpu()

    def predict(
        self,
        inputs: str | Path | Sequence[str | Path],
        *,
        threshold: float | None = None,
        batch_size: int = 8,
        on_error: Callable[[Path, DataError], None] | None = None,
    ) -> list[Prediction]:
        """Score image files and folders (searched recursively): one :class:`Prediction` each.

        ``anomalous`` is ``score > threshold`` (the given one, else the model's). An image that
        cannot be read raises :class:`~fod.errors.DataError`; with ``on_error``, it is passed
        to ``on_error(path, error)`` instead and left out, and the others are still scored.
        """
        return list(
            self.iter_predict(inputs, threshold=threshold, batch_size=batch_size, on_error=on_error)
        )

    def iter_predict(
        self,
        inputs: str | Path | Sequence[str | Path],
        *,
        threshold: float | None = None,
        batch_size: int = 8,
        on_error: Callable[[Path, DataError], None] | None = None,
    ) -> Iterator[Prediction]:
        """Like :meth:`predict`, one batch at a time, so heat maps of a large folder need not
        all fit in memory."""
        self._require_fitted()
        limit = self.threshold if threshold is None else _threshold(threshold)
        paths = image_files(inputs)
        for first in range(0, len(paths), max(1, batch_size)):
            chunk = paths[first : first + batch_size]
            images, kept = [], []
            for path in chunk:
                try:
                    images.append(load_batch([path], self.config.image_size)[0])
                except DataError as exc:
                    if on_error is None:
                        raise
                    on_error(path, exc)
                    continue
                kept.append(path)
            if not kept:
                continue
            chunk = kept
            maps, scores = self.score(torch.stack(images))
            for path, hm, sc in zip(chunk, maps.numpy(), scores.tolist(), strict=True):
                yield Prediction(path, float(sc), bool(sc > limit), hm.astype(np.float32))

    def panel(
        self,
        prediction: Prediction,
        mask: np.ndarray | None = None,
        *,
        with_mask: bool = False,
        title: str | None = None,
    ) -> np.ndarray:
        """RGB uint8 picture of a prediction: image | heat map (or image | ground truth | heat
        map with ``with_mask``), coloured on the model's fixed heat-map range."""
        from fod.report import overlay_panel

        size = self.config.image_size
        image = resize_image(load_image(prediction.path), (size, size))
        vmin, vmax = self.heatmap_range
        verdict = "ANOMALOUS" if prediction.anomalous else "normal"
        text = title if title is not None else f"{prediction.path.name}: {verdict}"
        return overlay_panel(
            image, mask, prediction.heatmap, prediction.score, text, vmin, vmax,
            ground_truth=with_mask,
        )  # fmt: skip

    # ------------------------------------------------------------------ test

    def test(
        self,
        data: Category | str | Path,
        *,
        layout: str | None = None,
        report_dir: str | Path | None = None,
        examples: int = 3,
        batch_size: int = 8,
        require_masks: bool = True,
    ) -> dict[str, Any]:
        """Metrics on a labelled category (:func:`fod.metrics.evaluate`) and per-image scores.

        Returns the evaluate dict plus ``category``, ``threshold``, ``seconds`` and
        ``images`` (path, label, defect type, score per image). With ``report_dir``, writes
        heat-map panels of the first ``examples`` good images and of each defect type, a
        ``scores.csv`` and the training-loss plot. ``require_masks=False`` accepts anomalous
        images without a mask (pixel metrics are then left out).
        """
        from fod.io import check_outside, check_writable
        from fod.metrics import evaluate
        from fod.scoring import score_samples

        self._require_fitted()
        if report_dir is not None:
            check_writable(report_dir, folder=True)
        category = _test_category(data, layout, require_masks)
        if report_dir is not None:  # panels are named <type>/<image>.png, like test images
            check_outside(report_dir, category.root, "report panels")
        t0 = time.perf_counter()
        scored = score_samples(self.detector, category.test, batch_size, self.device, self.progress)
        seconds = time.perf_counter() - t0
        with_masks = bool(scored.has_mask.all())
        results = evaluate(
            scored.labels,
            scored.scores,
            scored.masks if with_masks else None,
            scored.maps if with_masks else None,
            scored.defect_types,
        )
        if not with_masks:
            reason = "some anomalous test images have no mask"
            results["reasons"].update(pixel_auroc=reason, aupro=reason)
        results["category"] = category.name
        results["threshold"] = self.threshold
        results["seconds"] = seconds
        results["images"] = scored.records()
        if report_dir is not None:
            from fod.report import write_test_report

            results["report"] = str(
                write_test_report(
                    report_dir,
                    category,
                    scored,
                    results["images"],
                    image_size=self.config.image_size,
                    examples=examples,
                    heatmap_range=self.heatmap_range,
                    history=self.history,
                )
            )
        return results

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the model file (see :mod:`fod.training.checkpoint`). An existing file that is
        not a fod model is refused unless ``force``."""
        from fod.training import check_model_target, save_model_file

        self._require_fitted()
        check_model_target(path, force=force)
        assert self.levels is not None and self.threshold is not None
        return save_model_file(
            path,
            self.config,
            self.backbone,
            self.levels,
            threshold=self.threshold,
            stats=self.stats,
            history=self.history,
            heads=self.heads,
            segmenter=self.segmenter,
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "auto",
        threshold: float | None = None,
        progress: bool = True,
        **requested: Any,
    ) -> FOD:
        """Read a model file. Keywords name settings the caller expects (e.g.
        ``image_size=256``); a model made with other values is refused."""
        from fod.training import load_model_file

        dev = resolve_device(device)
        config, backbone, levels, meta = load_model_file(path, dev, requested or None)
        model = cls(config, device=dev, threshold=threshold, progress=progress)
        model.backbone, model.levels = backbone, levels
        model.heads = meta["heads"]
        model.segmenter = meta["segmenter"]
        model.stats = meta["stats"]
        model.history = meta["history"]
        if threshold is None:
            model.threshold = _threshold(meta["threshold"])
        return model


__all__ = ["FOD", "NotFittedError", "Prediction", "image_files", "resolve_device"]
