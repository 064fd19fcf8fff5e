"""Averaging resize: against Pillow's BOX filter and against an exact area average by up-sampling."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from linmaml.benchmarks.data.resize import resize_matrix, resize_stack


@pytest.mark.parametrize("in_size,out_size", [(105, 28), (84, 21), (32, 10), (50, 50), (9, 4), (105, 1)])
def test_box_equals_pillow(in_size, out_size):
    rng = np.random.default_rng(in_size * 100 + out_size)
    images = rng.random((5, in_size, in_size)).astype(np.float32)
    ours = resize_stack(images, out_size, "box")
    for image, mine in zip(images, ours):
        theirs = np.asarray(Image.fromarray(image, mode="F").resize((out_size, out_size), Image.BOX))
        assert np.abs(mine - theirs).max() <= 1e-6


@pytest.mark.parametrize("in_size,out_size", [(105, 28), (12, 5), (7, 7)])
def test_area_equals_block_mean_of_upsampled(in_size, out_size):
    # up-sampling by out_size (nearest) makes every footprint a whole block of out_size*... pixels
    rng = np.random.default_rng(7)
    image = rng.random((in_size, in_size))
    up = np.repeat(np.repeat(image, out_size, 0), out_size, 1)       # (in*out, in*out)
    block = in_size
    expected = up.reshape(out_size, block, out_size, block).mean(axis=(1, 3))
    assert np.abs(resize_stack(image, out_size, "area") - expected).max() <= 1e-6


def test_matrices_are_row_stochastic_and_cover_the_input():
    for method in ("box", "area"):
        m = resize_matrix(105, 28, method)
        assert np.allclose(m.sum(axis=1), 1.0, atol=1e-12)
        assert (m.sum(axis=0) > 0).all()
    # 105 -> 28: bands of 4, 4, 3, 4 pixels
    assert (resize_matrix(105, 28, "box") > 0).sum(axis=1)[:4].tolist() == [4, 4, 3, 4]


def test_stack_shape_and_convert():
    images = np.ones((2, 3, 10, 10), bool)
    out = resize_stack(images, 5, convert=np.logical_not)
    assert out.shape == (2, 3, 5, 5) and out.dtype == np.float32 and not out.any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="^size"):
        resize_stack(np.zeros((2, 8, 8)), 9)
    with pytest.raises(ValueError, match="^method"):
        resize_matrix(8, 4, "bilinear")
    with pytest.raises(ValueError, match="^images"):
        resize_stack(np.zeros(8), 4)
    with pytest.raises(TypeError, match="^size"):
        resize_stack(np.zeros((8, 8)), 4.5)
