"""benchmarks/object_copy.py: the unaligned-object stress test keeps masks on their objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import benchmark_script
from PIL import Image

from fod.data import find_categories


def _module():
    return benchmark_script("object_copy")


def test_a_white_object_lands_whole_and_its_mask_follows_it() -> None:
    copy = _module()
    image = Image.new("RGB", (60, 30), (255, 255, 255))
    mask = Image.new("L", (60, 30), 0)
    mask.paste(255, (0, 0, 30, 30))  # the left half of the object is defective
    out, new_mask = copy.place(image, mask, "test/x.png")
    a, m = np.asarray(out).astype(float), np.asarray(new_mask) > 0
    obj = a.min(axis=2) > 200  # the background is grey 90 +- 3 * noise
    assert out.size == new_mask.size == (copy.SIZE, copy.SIZE)
    side = np.sqrt(obj.sum() / 0.5)  # a 2:1 object: area = side * side / 2
    assert copy.OBJECT_SIDE[0] * 0.95 <= side <= copy.OBJECT_SIDE[1] * 1.05
    assert m.any() and (m & ~obj).sum() <= 0.02 * m.sum()  # the mask lies on the object
    assert 0.4 <= m.sum() / obj.sum() <= 0.6  # and covers its half
    again, _ = copy.place(image, mask, "test/x.png")
    other, _ = copy.place(image, mask, "test/y.png")
    assert np.array_equal(np.asarray(again), np.asarray(out))  # seeded by the key
    assert not np.array_equal(np.asarray(other), np.asarray(out))


def test_the_copy_is_a_category_with_the_subsets_asked_for(generated: Path, tmp_path: Path) -> None:
    copy = _module()
    out = tmp_path / "objects"
    n = copy.make_copy(generated, out, train=5, test_good=2, per_type=1, seed=3)
    (category,) = find_categories(out)
    types = {s.defect_type for s in category.test if s.label}
    assert len(category.train) == 5
    assert sum(1 for s in category.test if not s.label) == 2
    assert len(types) == len([d for d in (generated / "test").iterdir() if d.name != "good"])
    assert n == 5 + 2 + len(types)
    for sample in category.test:
        if sample.label:
            assert np.asarray(Image.open(sample.mask)).any(), sample.mask
