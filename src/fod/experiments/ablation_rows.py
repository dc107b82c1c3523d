"""The eight rows of the paper's ablation table (spec section 8) as model variants, and the
rows that show what each part of the calibrated head adds.

Each paper row fixes the recognition views, the entropy constraint, the reference features and
the anomaly score; everything else is held equal when `fod ablate` trains them, with the
paper's head and every good image trained on. The paper's image AUROC (MVTec AD / BTAD /
MVTec 3D-AD RGB / mean) is kept beside each row for the report. The head rows share one full
model trained on the fit split of the good images and differ only in the parts their head
sums (``head_parts``), calibrated on the held-out split; the last four add the anomaly
segmenter to the heat map: with the pooled part in the heat map (the default), with the
segmenter's context path, and with the nearest part on local averages of 3 x 3 tokens; one
more puts the synthetic anomalies (the validation's and the segmenter's) anywhere on the image
instead of on content, one averages every weighting of the validation's band in the image
score instead of its simplest, and one keeps the Gaussian parts' shrinkage that the held-out
likelihood chose instead of letting the validation choose it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fod.model.variant import Variant


@dataclass(frozen=True)
class AblationRow:
    key: str
    views: str
    entropy: str
    reference: str
    score: str
    variant: Variant
    paper_mvtec: float | None
    paper_btad: float | None
    paper_mvtec3d: float | None
    paper_mean: float | None
    head_parts: tuple[str, ...] | None = None
    validation: str = "none"
    image_rule: str = "single"
    bank_selection: str = "coverage"
    segmenter: bool = False
    segmenter_context: bool = False
    nearest_pool: int = 1
    anomaly_placement: str = "content"
    band_members: str = "simplest"
    shrinkage: str = "validation"


_RN = ("residual", "nearest")
_RFN = ("residual", "feature", "nearest")
_RNP = ("residual", "nearest", "pooled")
_RNPW = ("residual", "nearest", "pooled", "wide")
#: Calibrated-head rows: (key, parts, validation, bank selection, segmenter), from the paper's
#: score recalibrated to the default (residual + nearest, coverage bank, the synthetic
#: validation's weightings in the image score by the default rule, the anomaly segmenter in
#: the heat map, the pooled part in the heat map); the random-bank rows show what the coverage
#: bank adds, the single row what the band of weightings adds over the one nearest the plain
#: average (the default rule ``auto`` averages the band from 20 held-out images on), the
#: pooled row what the pooled part adds to the heat map, the last three rows what the wide
#: part, the segmenter's context path and the nearest part's 3 x 3 local average (options)
#: add; the row ending ``_anywhere`` what placing the synthetic anomalies on content adds,
#: the row ending ``_whole_band`` what averaging only the band's simplest weightings adds, the
#: row ending ``_likelihood_shrinkage`` what the validation's choice of shrinkage adds.
#: Validation: "none", or the synthetic one with the image rule "auto" (the default's) or
#: "single". Segmenter: "" (none), "local" (the default's) or "context". The nearest part
#: searches each token alone in every row but the one named ``_pooled``.
HEAD_ROWS: tuple[tuple[str, tuple[str, ...], str, str, str], ...] = (
    ("head_paper", ("paper",), "none", "coverage", ""),
    ("head_residual", ("residual",), "none", "coverage", ""),
    ("head_feature", ("feature",), "none", "coverage", ""),
    ("head_nearest", ("nearest",), "none", "coverage", ""),
    ("head_nearest_random_bank", ("nearest",), "none", "random", ""),
    ("head_feature_nearest", ("feature", "nearest"), "none", "coverage", ""),
    ("head_residual_nearest", _RN, "none", "coverage", ""),
    ("head_residual_feature_nearest", _RFN, "none", "coverage", ""),
    ("head_residual_nearest_validated_random_bank", _RN, "auto", "random", ""),
    ("head_residual_nearest_validated_single", _RN, "single", "coverage", ""),
    ("head_residual_nearest_validated", _RN, "auto", "coverage", ""),
    ("head_residual_nearest_validated_segmenter", _RN, "auto", "coverage", "local"),
    ("head_residual_nearest_pooled_validated_segmenter", _RNP, "auto", "coverage", "local"),
    (
        "head_residual_nearest_pooled_validated_segmenter_anywhere",
        _RNP,
        "auto",
        "coverage",
        "local",
    ),
    (
        "head_residual_nearest_pooled_validated_segmenter_whole_band",
        _RNP,
        "auto",
        "coverage",
        "local",
    ),
    (
        "head_residual_nearest_pooled_validated_segmenter_likelihood_shrinkage",
        _RNP,
        "auto",
        "coverage",
        "local",
    ),
    ("head_residual_nearest_pooled_wide_validated_segmenter", _RNPW, "auto", "coverage", "local"),
    ("head_residual_nearest_validated_segmenter_context", _RN, "auto", "coverage", "context"),
    ("head_residual_nearest_validated_segmenter_pooled", _RN, "auto", "coverage", "local"),
)
#: The rows that differ from the default in more than the tuple above says, as
#: :class:`AblationRow` fields (every other row keeps the default's values): the nearest part
#: on 3 x 3 averages of tokens, the synthetic anomalies anywhere, the whole band in the image
#: score, the likelihood's shrinkage.
ROW_SETTINGS: dict[str, dict[str, Any]] = {
    "head_residual_nearest_validated_segmenter_pooled": {"nearest_pool": 3},
    "head_residual_nearest_pooled_validated_segmenter_anywhere": {"anomaly_placement": "anywhere"},
    "head_residual_nearest_pooled_validated_segmenter_whole_band": {"band_members": "all"},
    "head_residual_nearest_pooled_validated_segmenter_likelihood_shrinkage": {
        "shrinkage": "likelihood"
    },
}


def _head_score(
    parts: tuple[str, ...],
    validation: str,
    bank_selection: str,
    segmenter: str,
    nearest_pool: int = 1,
    anomaly_placement: str = "content",
    band_members: str = "simplest",
    shrinkage: str = "validation",
) -> str:
    text = "calibrated " + " + ".join(parts)
    if "nearest" in parts and bank_selection != "coverage":
        text += f", {bank_selection} bank"
    text += {"none": "", "auto": ", validated", "single": ", validated, single weighting"}[
        validation
    ]
    kind = {"": "", "local": ", segmenter", "context": ", segmenter with context"}[segmenter]
    pooled = f", nearest on {nearest_pool} x {nearest_pool} averages" if nearest_pool > 1 else ""
    anywhere = ", anomalies anywhere" if anomaly_placement == "anywhere" else ""
    whole = ", whole band" if band_members == "all" and validation == "auto" else ""
    likelihood = (
        ", likelihood shrinkage" if shrinkage == "likelihood" and validation != "none" else ""
    )
    return text + kind + pooled + anywhere + whole + likelihood


def head_rows() -> list[AblationRow]:
    """The calibrated head's rows: the full model, calibrated, with each set of parts."""
    return [
        AblationRow(
            key,
            "patch + intra + inter",
            "with",
            "mean",
            _head_score(parts, validation, bank, segmenter, **ROW_SETTINGS.get(key, {})),
            Variant(),
            None,
            None,
            None,
            None,
            parts,
            "none" if validation == "none" else "synthetic",
            "single" if validation == "none" else validation,
            bank,
            bool(segmenter),
            segmenter == "context",
            **ROW_SETTINGS.get(key, {}),
        )
        for key, parts, validation, bank, segmenter in HEAD_ROWS
    ]


def ablation_rows(coreset_size: int = 4) -> list[AblationRow]:
    """The paper table's rows, then the head rows; ``coreset_size`` is k of the coreset."""
    return paper_rows(coreset_size) + head_rows()


def paper_rows(coreset_size: int = 4) -> list[AblationRow]:
    """The paper table's rows, top to bottom; ``coreset_size`` is k of the coreset reference."""
    return [
        AblationRow(
            "patch", "patch-wise", "-", "-", "Rec", Variant.patch_only(), 0.972, 0.954, 0.790, 0.905
        ),
        AblationRow(
            "intra_noent_div",
            "intra",
            "without",
            "-",
            "Div",
            Variant(inter=False, entropy=False, score="div"),
            0.700,
            0.811,
            0.708,
            0.740,
        ),
        AblationRow(
            "intra_div",
            "intra",
            "with",
            "-",
            "Div",
            Variant(inter=False, score="div"),
            0.911,
            0.822,
            0.717,
            0.817,
        ),
        AblationRow(
            "intra_recdiv",
            "intra",
            "with",
            "-",
            "Rec & Div",
            Variant(inter=False),
            0.974,
            0.952,
            0.818,
            0.915,
        ),
        AblationRow(
            "inter_mean",
            "inter",
            "with",
            "mean",
            "Rec & Div",
            Variant(intra=False),
            0.980,
            0.958,
            0.832,
            0.923,
        ),
        AblationRow(
            "inter_coreset",
            "inter",
            "with",
            "coreset",
            "Rec & Div",
            Variant(intra=False, reference="coreset", coreset_size=coreset_size),
            0.925,
            0.884,
            0.700,
            0.836,
        ),
        AblationRow(
            "intra_inter_div",
            "intra + inter",
            "with",
            "mean",
            "Div",
            Variant(score="div"),
            0.896,
            0.922,
            0.814,
            0.877,
        ),
        AblationRow(
            "full",
            "patch + intra + inter",
            "with",
            "mean",
            "Rec & Div",
            Variant(),
            0.992,
            0.960,
            0.884,
            0.945,
        ),
    ]
