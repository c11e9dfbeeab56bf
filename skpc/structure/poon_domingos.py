"""Poon-Domingos region graphs: axis-aligned splits of an image.

Poon & Domingos (UAI 2011, "Sum-product networks: a new deep architecture")
model an image by recursively cutting rectangles in two along grid lines,
sharing every sub-rectangle between all the rectangles that produce it. The
Einsum Networks paper (Peharz et al., ICML 2020) uses this structure with a
list of step sizes ``delta`` applied coarse to fine.
"""

import math
import numbers
from collections import deque

import numpy as np

from .region_graph import RegionGraph

__all__ = ["poon_domingos"]


def _check_image_shape(image_shape):
    try:
        shape = tuple(image_shape)
    except TypeError:
        shape = None
    if (
        shape is None
        or len(shape) not in (2, 3)
        or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
            for s in shape
        )
    ):
        raise ValueError(
            "image_shape must be (height, width) or (height, width, channels) "
            f"with positive integers; got {image_shape!r}"
        )
    shape = tuple(int(s) for s in shape)
    return shape if len(shape) == 3 else shape + (1,)


def _check_deltas(delta):
    deltas = [delta] if isinstance(delta, numbers.Real) else list(delta)
    if not deltas:
        raise ValueError("delta is an empty list: give at least one step size")
    for d in deltas:
        if (
            isinstance(d, bool)
            or not isinstance(d, numbers.Real)
            or not math.isfinite(d)
            or d < 1
        ):
            raise ValueError(
                f"delta={d!r} is not a valid step size: every delta must be a "
                "number >= 1 (the distance in pixels between cut lines)"
            )
    return deltas


def _global_cuts(length, delta):
    """Cut positions of step ``delta`` on an axis of ``length`` pixels.

    A cut at ``c`` separates pixels ``< c`` from pixels ``>= c``; all cuts lie
    strictly inside ``(0, length)``. ``ceil`` keeps non-integer steps on the
    pixel grid, as in the Einsum Networks implementation.
    """
    n_cuts = int((length - 1) // delta)
    return [int(math.ceil((i + 1) * delta)) for i in range(n_cuts)]


def poon_domingos(image_shape, delta, vertical_only=False, max_split_depth=None):
    """Poon-Domingos region graph of an image.

    Regions are axis-aligned rectangles ``[h0, h1) x [w0, w1)`` of pixels,
    each with all of its channels. Starting from the whole image, a rectangle
    is split, for the first step size in ``delta`` that has a cut line
    strictly inside it along an allowed axis, at every such cut line and
    along every allowed axis: one binary partition per cut line. Rectangles
    produced more than once are shared, which is what makes the structure
    compact. A rectangle with no cut line inside it is a leaf.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` or ``(H, W, C)``. Variable ``(h * W + w) * C + c`` is
        channel ``c`` of pixel ``(h, w)``, i.e. the variables are
        ``np.arange(H * W * C).reshape(H, W, C)``; ``C = 1`` for ``(H, W)``.
    delta : number or sequence of numbers
        Step sizes, each >= 1. Step ``d`` places cut lines at
        ``ceil((i + 1) * d)`` for ``i = 0 .. floor((s - 1) / d) - 1`` on an
        axis of length ``s``; the cut lines are global, so neighbouring
        rectangles share them. The steps are tried in the given order, so
        list them coarse first (e.g. ``[8, 4]``): a rectangle is refined by
        a finer step only once the coarser ones no longer cut it.
    vertical_only : bool, default=False
        Cut only with vertical lines, i.e. along the width axis, so every
        region spans full columns of its parent's rows (as the Einsum
        Networks paper did for SVHN and CelebA).
    max_split_depth : int or None, default=None
        If given, rectangles first reached after this many splits from the
        whole image (breadth first) are not split further. None: no limit.

    Returns
    -------
    RegionGraph
        A validated graph with binary partitions. Region 0 is the whole
        image; regions appear in breadth-first order of discovery. Each
        partition's children are ordered (top, bottom) or (left, right).

    Raises
    ------
    ValueError
        If ``image_shape`` is not 2 or 3 positive integers, a delta is below
        1, ``max_split_depth`` is negative, or a delta makes no cut at all in
        an image of more than one pixel.

    Examples
    --------
    >>> rg = poon_domingos((28, 28), delta=7)
    >>> len(rg.leaves), len(rg.regions[rg.leaves[0]])
    (16, 49)
    """
    H, W, C = _check_image_shape(image_shape)
    deltas = _check_deltas(delta)
    if max_split_depth is not None:
        if isinstance(max_split_depth, bool) or not isinstance(
            max_split_depth, numbers.Integral
        ):
            raise ValueError(
                f"max_split_depth must be None or an integer; got {max_split_depth!r}"
            )
        if max_split_depth < 0:
            raise ValueError(
                f"max_split_depth must be None or >= 0; got {max_split_depth}"
            )
    axes = (1,) if vertical_only else (0, 1)
    lengths = (H, W)

    if H * W > 1:
        longest = max(lengths[a] for a in axes)
        if longest == 1:
            # Only reachable with vertical_only on a one-pixel-wide image.
            raise ValueError(
                f"vertical_only=True cannot split an image of width 1 "
                f"(image_shape={image_shape!r}): set vertical_only=False"
            )
    # cuts[j][a]: the global cut lines of deltas[j] along axis a.
    cuts = [{a: _global_cuts(lengths[a], d) for a in axes} for d in deltas]
    if H * W > 1:
        for d, per_axis in zip(deltas, cuts):
            if not any(per_axis.values()):
                raise ValueError(
                    f"delta={d} makes no cut in a {H}x{W} image"
                    f"{' along the width' if vertical_only else ''}: use a "
                    f"delta smaller than {longest} or remove this delta"
                )

    pixels = np.arange(H * W * C).reshape(H, W, C)

    full = (0, H, 0, W)
    index = {full: 0}
    rects = [full]
    split_depth = [0]
    partitions = []
    queue = deque([0])
    while queue:
        i = queue.popleft()
        if max_split_depth is not None and split_depth[i] >= max_split_depth:
            continue
        rect = rects[i]
        for per_axis in cuts:
            # Interior cut lines of this delta along each allowed axis.
            inside = {
                a: [c for c in per_axis[a] if rect[2 * a] < c < rect[2 * a + 1]]
                for a in axes
            }
            if not any(inside.values()):
                continue
            for a in axes:
                for c in inside[a]:
                    low, high = list(rect), list(rect)
                    low[2 * a + 1] = c
                    high[2 * a] = c
                    children = []
                    for child in (tuple(low), tuple(high)):
                        j = index.get(child)
                        if j is None:
                            j = index[child] = len(rects)
                            rects.append(child)
                            split_depth.append(split_depth[i] + 1)
                            queue.append(j)
                        children.append(j)
                    partitions.append((i, tuple(children)))
            # Finer deltas are used only where the coarser ones do not cut.
            break

    regions = [pixels[h0:h1, w0:w1].ravel() for h0, h1, w0, w1 in rects]
    return RegionGraph(H * W * C, regions, partitions).validate()
