"""The calibrated head: token scores measured against good images' own variability.

The paper's score (spec section 6) multiplies a Euclidean reconstruction error by an
attention factor. :class:`CalibratedHead` replaces it, per level, by a sum of parts, each
standardised by its mean and spread over held-out good images (never the training images:
a nearest-patch distance of a training image to a bank that holds it is zero):

- ``residual``: Mahalanobis distance of the transformer's discrepancy ``x - x_hat`` under a
  per-position Gaussian of good images' discrepancies (shrunk towards a shared covariance by
  the weight that gives the held-out images the highest likelihood);
- ``feature``: the same Gaussian on the features ``x`` themselves (no transformer);
- ``nearest``: distance of ``x`` to the nearest token of a memory bank of good tokens (half
  drawn at random, half the good tokens farthest from those: rare good patterns), each token
  first averaged with its ``pool`` x ``pool`` neighbours when ``pool`` > 1 (the bank's
  tokens likewise);
- ``pooled``: the same search for each token averaged with its :data:`POOLED_SIDE` x
  :data:`POOLED_SIDE` neighbours, in a bank of such averages (the tokens are already 3 x 3
  averages of the backbone's map; this describes 5 x 5 of it, weighted to the centre). An
  average shows faint changes over regions larger than a token, and blurs
  a defect smaller than its square, so it is a heat-map part (:data:`MAP_PARTS`): it adds
  to the map beside the token's own search and never enters the image score, a maximum
  that one diluted small defect would lower;
- ``wide``: the same search on :data:`WIDE_SIDE` x :data:`WIDE_SIDE` averages (56 pixels at
  stride 8, 112 at stride 16, at input 256), a heat-map part for defects that are large,
  faint regions; not in the default head, since it blurs small defects further;
- ``paper``: the paper's token score for the model's variant.

Standardising each part makes them addable and the levels comparable (the heat map averages
levels). The image score may weigh levels and parts differently: each row k of
``image_weight`` (K, P) is one weighting, per part the level's weight times the number of
levels, or 0 for a part left out (one row of ones on the image parts, 0 on the heat-map
parts: the plain sum and average); the image score
is the mean over rows of each weighting's blurred maximum. The rows are chosen on synthetic
anomalies by :mod:`fod.training.validation`. All statistics are buffers, so a head saves with
``state_dict`` and exports with the rest of the :class:`~fod.scoring.Detector`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fod.batches import map_batches
from fod.config import MAP_HEAD_PARTS
from fod.model import FODOutput, Variant, token_scores
from fod.scoring.normality import (
    GaussianMoments,
    bank_indices,
    choose_shrinkage,
    gaussian_from_moments,
    gaussian_moments,
    local_average,
    mahalanobis,
    nearest_distance,
)

#: The parts a calibrated head can sum, in a fixed order.
PARTS = ("residual", "feature", "nearest", "pooled", "wide", "paper")
#: Parts scored by a per-position Gaussian, whose shrinkage weight is fitted (:func:`fit_head`).
GAUSSIAN_PARTS = ("residual", "feature")
#: Parts that need the transformer's output (the others use the features alone).
MODEL_PARTS = frozenset({"residual", "paper"})
#: Parts of the heat map only: their image weight is always 0 (defined beside the config's
#: parts, which refuses a head of heat-map parts alone before any training).
MAP_PARTS = MAP_HEAD_PARTS
#: The parts that search a memory bank, and the name of each one's bank buffer.
BANKS = {"nearest": "bank", "pooled": "pooled_bank", "wide": "wide_bank"}
#: Side of the square of tokens the ``pooled`` part averages: the smallest square beyond the
#: token itself (3 tokens span 24 pixels at stride 8, 48 at stride 16; not tuned).
POOLED_SIDE = 3
#: Side of the square of tokens the ``wide`` part averages (a region of a fifth to two
#: fifths of the image side at input 256): 7 was kept over 5 for its larger gain on large
#: defects, a choice made on test-set figures of MTD and its copies (README).
WIDE_SIDE = 7
#: The sides of the averaging parts, which share one bank size (``pooled_bank_size``).
AVERAGED_SIDES = {"pooled": POOLED_SIDE, "wide": WIDE_SIDE}


def bank_side(part: str, pool: int) -> int:
    """Side of the square of tokens bank part ``part`` averages: ``pool`` (the config's
    ``nearest_pool``) for ``nearest``, :data:`AVERAGED_SIDES` for the others."""
    return int(pool) if part == "nearest" else AVERAGED_SIDES[part]


def check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    """``parts`` in :data:`PARTS` order; unknown, repeated or no parts are an error."""
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts or len(set(parts)) != len(parts):
        raise ValueError(
            f"head parts must be a non-empty set of {', '.join(PARTS)}; got {list(parts)}"
        )
    return tuple(p for p in PARTS if p in parts)


def image_part_mask(parts: Sequence[str]) -> Tensor:
    """(P,): 1 for each part of ``parts`` that may enter the image score, 0 for a heat-map
    part (:data:`MAP_PARTS`)."""
    return torch.tensor([0.0 if p in MAP_PARTS else 1.0 for p in check_parts(parts)])


class CalibratedHead(nn.Module):
    """One level's calibrated token score: ``sum_p (s_p - center_p) / scale_p``.

    Build it with :func:`fit_head`; an empty one (zeros) of the right shapes is what
    :meth:`from_state_dict` fills when a model file is loaded.
    """

    def __init__(
        self,
        parts: Sequence[str],
        variant: Variant,
        tokens: int,
        channels: int,
        bank_size: int = 0,
        height: int = 1,
        width: int = 1,
        weightings: int = 1,
        pool: int = 1,
        pooled_bank_size: int = 0,
    ) -> None:
        super().__init__()
        self.parts = check_parts(parts)
        self.variant = variant
        self.height, self.width = int(height), int(width)
        #: Side of the square of tokens the nearest part averages (config ``nearest_pool``).
        self.pool = int(pool)
        if tokens != self.height * self.width:
            raise ValueError(f"{tokens} tokens do not fill a {height} x {width} grid")
        for name in GAUSSIAN_PARTS:
            if name in self.parts:
                self.register_buffer(f"{name}_mean", torch.zeros(tokens, channels))
                self.register_buffer(f"{name}_precision", torch.zeros(tokens, channels, channels))
        sizes = {"nearest": bank_size, **dict.fromkeys(AVERAGED_SIDES, pooled_bank_size)}
        for part, name in BANKS.items():
            if part in self.parts:
                if sizes[part] < 1:
                    raise ValueError(f"the {part} part needs a memory bank of at least one token")
                self.register_buffer(name, torch.zeros(sizes[part], channels))
        #: The shrinkage weight each Gaussian part chose (for reports; not needed to score).
        self.shrinkage: dict[str, float] = {}
        self.register_buffer("center", torch.zeros(len(self.parts)))
        self.register_buffer("scale", torch.ones(len(self.parts)))
        if weightings < 1:
            raise ValueError(f"the image score needs at least one weighting, got {weightings}")
        mask = image_part_mask(self.parts)
        if not mask.any():
            raise ValueError(f"head parts {list(self.parts)} leave nothing for the image score")
        self.register_buffer("image_weight", mask.expand(int(weightings), -1).clone())

    def side(self, part: str) -> int:
        """Side of the square of tokens a bank part (:data:`BANKS`) averages before its search."""
        return bank_side(part, self.pool)

    @property
    def needs_model(self) -> bool:
        return any(p in MODEL_PARTS for p in self.parts)

    def part_scores(
        self, output: FODOutput, paper: Tensor | None = None, only: Sequence[str] | None = None
    ) -> list[Tensor]:
        """Raw (B, L) score of each part, in :attr:`parts` order (``paper``: the paper part's
        scores when already computed; otherwise ``output`` needs the score's Div fields;
        ``only``: just the parts named there)."""
        x = output.tokens
        out = []
        for part in self.parts:
            if only is not None and part not in only:
                continue
            if part == "residual":
                r = x - output.reconstruction
                out.append(mahalanobis(r, self.residual_mean, self.residual_precision))
            elif part == "feature":
                out.append(mahalanobis(x, self.feature_mean, self.feature_precision))
            elif part in BANKS:
                averaged = local_average(x, self.height, self.width, self.side(part))
                out.append(nearest_distance(averaged, getattr(self, BANKS[part])))
            elif paper is not None:
                out.append(paper)
            else:
                score = token_scores(output, self.variant, self.height, self.width)
                out.append(score.flatten(1))
        return out

    def standardised(self, output: FODOutput) -> Tensor:
        """(B, P, H, W): each part's score minus its centre, over its scale."""
        z = torch.stack(self.part_scores(output), dim=1)
        z = (z - self.center.view(1, -1, 1)) / self.scale.view(1, -1, 1)
        return z.reshape(z.shape[0], len(self.parts), self.height, self.width)

    def forward(self, output: FODOutput) -> Tensor:
        """(B, H, W): the sum of the standardised parts (the heat map's token scores)."""
        return self.standardised(output).sum(dim=1)

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Tensor],
        parts: Sequence[str],
        variant: Variant,
        height: int,
        width: int,
        pool: int = 1,
    ) -> CalibratedHead:
        """A head with the shapes of ``state`` (the bank's size is data-dependent), loaded;
        ``pool`` is the config's ``nearest_pool``."""
        parts = check_parts(parts)
        source = state.get("residual_mean", state.get("feature_mean"))
        channels = int(source.shape[1]) if source is not None else int(state["bank"].shape[1])
        banks = {part: int(state[n].shape[0]) if n in state else 0 for part, n in BANKS.items()}
        averaged = max(banks[part] for part in AVERAGED_SIDES)
        weight = state.get("image_weight")
        if weight is None:  # files from before the image weights: plain average
            weight = image_part_mask(parts).unsqueeze(0)
        elif weight.dim() == 1:  # files from before several weightings: the one they had
            weight = weight.unsqueeze(0)
        state = {**state, "image_weight": weight}
        head = cls(
            parts,
            variant,
            height * width,
            channels,
            banks["nearest"],
            height,
            width,
            len(weight),
            pool,
            averaged,
        )
        head.load_state_dict(state, strict=True)
        return head.eval()


def _outputs(
    model: nn.Module, features: Tensor, batch_size: int, device: torch.device, paper: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Tokens, reconstructions and (with ``paper``) the paper's scores of ``features``
    (N, C, H, W), on the CPU; Div is computed only when the paper's score needs it."""
    from fod.model.scores import score_branches

    variant = model.variant
    branches = score_branches(variant) if paper else frozenset()
    h, w = model.spec.height, model.spec.width

    def run(batch: list[Tensor]) -> list[Tensor]:
        out = model(batch[0], div_branches=branches, entropy=False)
        parts = [out.tokens, out.reconstruction]
        return [*parts, token_scores(out, variant, h, w).flatten(1)] if paper else parts

    outputs = map_batches(run, [features], batch_size, device)
    return outputs[0], outputs[1], outputs[2] if paper else None


def fit_head(
    parts: Sequence[str],
    model: nn.Module,
    fit_features: Tensor,
    holdout_features: Tensor | None,
    bank_size: int,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    bank_selection: str = "coverage",
    pool: int = 1,
    pooled_bank_size: int | None = None,
    shrinkage: Mapping[str, float] | None = None,
    banks: Mapping[str, Tensor] | None = None,
    outputs: tuple[FODOutput, FODOutput | None] | None = None,
) -> CalibratedHead:
    """Fit one level's head: statistics on ``fit_features`` (the images the transformer was
    trained on), centre and scale of each part on ``holdout_features`` (good images neither
    the transformer nor the statistics have seen); ``bank_selection`` as
    :func:`~fod.scoring.normality.memory_bank`, ``pool`` as
    :func:`~fod.scoring.normality.local_average` for the nearest part; the banks of the
    averaging parts (:data:`AVERAGED_SIDES`) hold ``pooled_bank_size`` tokens each (None:
    ``bank_size``). With ``shrinkage`` (a weight per Gaussian part) the held-out images do
    not choose it, and ``holdout_features`` may be None: the head is then left uncalibrated
    (centre 0, scale 1) for the caller's :func:`calibrate_head`, as cross-fitting does.
    ``banks`` (an (M, C) tensor per bank part): use these memory banks instead of selecting
    them from ``fit_features`` (cross-fitting hands each fold its share of the banks of
    every image, :func:`bank_entries`); the bank parts it does not name are selected.
    ``outputs``: the :func:`model_outputs` of the fit and held-out features when the caller
    has them (cross-fitting runs the transformer once for all its fits; not with the paper
    part, whose scores need more than the outputs)."""
    parts = check_parts(parts)
    if holdout_features is None and shrinkage is None:
        raise ValueError("without held-out images the head needs its shrinkage weights given")
    if holdout_features is not None and holdout_features.shape[0] < 1:
        raise ValueError("the head needs at least one held-out good image to calibrate on")
    device = torch.device(device)
    model = model.to(device).eval()
    spec = model.spec
    if outputs is not None and "paper" in parts:
        raise ValueError("the paper part needs its scores computed here: pass no outputs")
    if outputs is None:
        tokens, recon, _ = _outputs(model, fit_features, batch_size, device, paper=False)
    else:
        tokens, recon = outputs[0].tokens, outputs[0].reconstruction
    sizes = _bank_sizes(parts, bank_size, pooled_bank_size, tokens.shape[0] * tokens.shape[1])
    head = CalibratedHead(  # sizes of absent parts unused; given banks replace these buffers
        parts,
        model.variant,
        spec.tokens,
        spec.channels,
        sizes.get("nearest", 0),
        spec.height,
        spec.width,
        pool=pool,
        pooled_bank_size=max((sizes[p] for p in AVERAGED_SIDES if p in sizes), default=0),
    )
    held = None
    if holdout_features is not None and outputs is not None and outputs[1] is not None:
        held = (outputs[1].tokens, outputs[1].reconstruction, None)
    elif holdout_features is not None:
        held = _outputs(model, holdout_features, batch_size, device, paper="paper" in parts)
    for name in GAUSSIAN_PARTS:
        if name in parts:
            fit_x = _gaussian_input(name, tokens, recon)
            moments = gaussian_moments(fit_x)  # shared by every weight tried and the fit
            if shrinkage is not None:
                shrink = float(shrinkage[name])
            else:
                assert held is not None
                held_x = _gaussian_input(name, held[0], held[1])
                shrink = choose_shrinkage(fit_x, held_x, moments=moments)
            _set_gaussian(head, name, moments, shrink)
    given = dict(banks or {})
    missing = {part: size for part, size in sizes.items() if part not in given}
    chosen = _select_banks(tokens, spec.height, spec.width, pool, missing, seed, bank_selection)
    given.update({part: entries for part, (entries, _) in chosen.items()})
    for part, name in BANKS.items():
        if part in parts:
            setattr(head, name, given[part].to(tokens.dtype).contiguous())
    if held is not None:
        with torch.no_grad():
            scores = head.part_scores(FODOutput(held[0], held[1]), held[2])
        calibrate_head(head, torch.stack(scores, dim=1))
    return head.to(device).eval()


def _bank_sizes(
    parts: Sequence[str], bank_size: int, pooled_bank_size: int | None, n_tokens: int
) -> dict[str, int]:
    """Per bank part of ``parts``: its bank's size (``pooled_bank_size`` for the averaging
    parts, None: ``bank_size``), at most ``n_tokens``, every token there is."""
    pooled = bank_size if pooled_bank_size is None else pooled_bank_size
    return {
        part: min(int(bank_size if part == "nearest" else pooled), int(n_tokens))
        for part in BANKS
        if part in parts
    }


def _select_banks(
    tokens: Tensor,
    height: int,
    width: int,
    pool: int,
    sizes: Mapping[str, int],
    seed: int,
    selection: str,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per bank part of ``sizes``: its memory bank of ``tokens`` (N, L, C), each token
    averaged as the part averages (:func:`bank_side`), and the image (0..N-1) each entry
    comes from."""
    out = {}
    for part, size in sizes.items():
        averaged = local_average(tokens, height, width, bank_side(part, pool))
        idx = bank_indices(averaged, size, seed, selection)
        out[part] = (averaged.reshape(-1, averaged.shape[-1])[idx].clone(), idx // tokens.shape[1])
    return out


def bank_entries(
    parts: Sequence[str],
    model: nn.Module,
    features: Tensor,
    bank_size: int,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    bank_selection: str = "coverage",
    pool: int = 1,
    pooled_bank_size: int | None = None,
    outputs: FODOutput | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """The memory banks :func:`fit_head` would select from ``features`` (N, C, H, W), one
    per bank part of ``parts``, each with the image (0..N-1) every entry comes from: the
    entries of some images can then be dropped (cross-fitting's folds). ``outputs``: the
    features' :func:`model_outputs` when the caller has them."""
    parts = check_parts(parts)
    device = torch.device(device)
    model = model.to(device).eval()
    spec = model.spec
    if outputs is None:
        tokens, _, _ = _outputs(model, features, batch_size, device, paper=False)
    else:
        tokens = outputs.tokens
    sizes = _bank_sizes(parts, bank_size, pooled_bank_size, tokens.shape[0] * tokens.shape[1])
    return _select_banks(tokens, spec.height, spec.width, pool, sizes, seed, bank_selection)


def _gaussian_input(part: str, tokens: Tensor, reconstruction: Tensor) -> Tensor:
    """What a Gaussian part models: the discrepancy for ``residual``, the tokens for ``feature``."""
    return tokens - reconstruction if part == "residual" else tokens


def _set_gaussian(head: CalibratedHead, part: str, moments: GaussianMoments, shrink: float) -> None:
    mean, precision = gaussian_from_moments(moments, shrink=shrink)
    setattr(head, f"{part}_mean", mean.to(head.center.device))
    setattr(head, f"{part}_precision", precision.to(head.center.device))
    head.shrinkage[part] = float(shrink)


def gaussian_inputs(parts: Sequence[str], fit: FODOutput) -> dict[str, GaussianMoments]:
    """Per Gaussian part of ``parts`` (:data:`GAUSSIAN_PARTS`), the :func:`gaussian_moments`
    of what it models on ``fit``, the :func:`model_outputs` of the images a head is fitted
    on: computed once, they serve every shrinkage weight :func:`with_shrinkage` tries."""
    return {
        name: gaussian_moments(_gaussian_input(name, fit.tokens, fit.reconstruction))
        for name in GAUSSIAN_PARTS
        if name in parts
    }


def model_outputs(
    model: nn.Module,
    features: Tensor,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> FODOutput:
    """Tokens and reconstructions (N, L, C) of ``features`` (N, C, H, W), on the CPU: what
    the Gaussian parts (:data:`GAUSSIAN_PARTS`) are fitted on and score."""
    device = torch.device(device)
    tokens, recon, _ = _outputs(model.to(device).eval(), features, batch_size, device, False)
    return FODOutput(tokens.cpu(), recon.cpu())


def with_shrinkage(
    head: CalibratedHead, fit: Mapping[str, GaussianMoments], shrink: float
) -> CalibratedHead:
    """A copy of ``head`` whose Gaussian parts (:data:`GAUSSIAN_PARTS`) are fitted again with
    shrinkage weight ``shrink`` on ``fit``, the :func:`gaussian_inputs` of the images ``head``
    was fitted on; banks, centre and scale are copied (calibrate it again)."""
    state = {k: v.cpu() for k, v in head.state_dict().items()}
    copy = CalibratedHead.from_state_dict(
        state, head.parts, head.variant, head.height, head.width, head.pool
    )
    copy.shrinkage = dict(head.shrinkage)
    for name in GAUSSIAN_PARTS:
        if name in copy.parts:
            _set_gaussian(copy, name, fit[name], shrink)
    return copy.to(head.center.device).eval()


def raw_part_scores(
    head: CalibratedHead,
    model: nn.Module,
    features: Tensor,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    outputs: FODOutput | None = None,
) -> Tensor:
    """(N, P, L): each part's raw (unstandardised) token scores of ``features`` (N, C, H, W)
    under ``head``, on the CPU (``outputs``: their :func:`model_outputs` when at hand; not
    with the paper part)."""
    device = torch.device(device)
    model = model.to(device).eval()
    if outputs is not None and "paper" in head.parts:
        raise ValueError("the paper part needs its scores computed here: pass no outputs")
    if outputs is None:
        tokens, recon, paper = _outputs(model, features, batch_size, device, "paper" in head.parts)
    else:
        tokens, recon, paper = outputs.tokens.to(device), outputs.reconstruction.to(device), None
    with torch.no_grad():
        return torch.stack(head.to(device).part_scores(FODOutput(tokens, recon), paper), dim=1)


def gaussian_part_scores(head: CalibratedHead, output: FODOutput) -> Tensor:
    """(N, G, L): the raw token scores of just the Gaussian parts of ``head``
    (:data:`GAUSSIAN_PARTS`, in its order) for ``output`` (:func:`model_outputs`), on the
    CPU: all that a change of shrinkage changes."""
    output = FODOutput(
        output.tokens.to(head.center.device), output.reconstruction.to(head.center.device)
    )
    with torch.no_grad():
        scores = head.part_scores(output, only=GAUSSIAN_PARTS)
    return torch.stack(scores, dim=1).cpu()


def calibrate_head(head: CalibratedHead, scores: Tensor) -> None:
    """Set each part's centre and scale to the mean and spread of its raw ``scores``
    (N, P, L) of good images the head's statistics did not see."""
    flat = scores.detach().transpose(0, 1).reshape(scores.shape[1], -1).double()
    head.center = flat.mean(1).float().to(head.center.device)
    spread = flat.std(1) if flat.shape[1] > 1 else flat.abs().mean(1)
    head.scale = spread.clamp_min(1e-6).float().to(head.scale.device)


__all__ = [
    "AVERAGED_SIDES",
    "BANKS",
    "GAUSSIAN_PARTS",
    "MAP_PARTS",
    "MODEL_PARTS",
    "PARTS",
    "POOLED_SIDE",
    "WIDE_SIDE",
    "CalibratedHead",
    "bank_entries",
    "bank_side",
    "calibrate_head",
    "check_parts",
    "fit_head",
    "gaussian_inputs",
    "gaussian_part_scores",
    "image_part_mask",
    "model_outputs",
    "raw_part_scores",
    "with_shrinkage",
]
