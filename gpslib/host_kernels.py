"""Compiled (numba) host-side bookkeeping of a reordering: loops over tokens, run as machine code.

Index bookkeeping on (B, T) integers runs once per forward. Written as NumPy or tensor
operations it is tens of calls, and inside a forward each runs cold (the backbone has
just evicted the caches): 5-10% of a forward of the embedded model. As loops compiled
here it is one call. The Python-facing functions (checks, errors, shapes) are
:func:`gpslib.tokenmixer.grouped_order` and :mod:`gpslib.prompt_layout`.

Every compiled function that calls another lives in this one file: numba's on-disk
cache (``cache=True``, in ``__pycache__``) is invalidated per source file, so a kernel
calling a kernel of another module would keep a stale copy of it after that module
changed.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["grouped_row", "grouped_rows", "cosine_assignment_row", "row_layout", "layout_rows", "cosine_rows"]


@numba.njit(cache=True)
def grouped_row(assignment, n_text, after, out):
    """Algorithm 1's sequence for one row, by counting: assignment (M,) int64 in [-1, n_text);
    writes out (M + n_text,): unmatched image indices first, then per text token j its
    image tokens (original order) before ("after": behind) the text index M + j."""
    m = assignment.shape[0]
    count = np.zeros(n_text + 1, np.int64)  # count[j]: image tokens grouped with text j
    s = 0
    for k in range(m):
        if assignment[k] < 0:
            out[s] = k
            s += 1
        else:
            count[assignment[k]] += 1
    start = np.empty(n_text + 1, np.int64)  # where text j's image tokens go
    for j in range(n_text):
        if after:
            out[s] = m + j
            start[j] = s + 1
        else:
            start[j] = s
            out[s + count[j]] = m + j
        s += count[j] + 1
    for k in range(m):
        j = assignment[k]
        if j >= 0:
            out[start[j]] = k
            start[j] += 1


@numba.njit(cache=True)
def grouped_rows(assignment, n_text, after, out):
    """:func:`grouped_row` for every row of assignment (R, M) into out (R, M + n_text)."""
    for r in range(assignment.shape[0]):
        grouped_row(assignment[r], n_text, after, out[r])


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def cosine_assignment_row(image, tokens, text_pos, n_text, threshold, out):
    """:func:`gpslib.tokenmixer.cosine_assignment`'s rule for one sample on host arrays, in float64.

    image (M, D); tokens (T, D), the sample's text tokens being rows ``text_pos[:n_text]``;
    writes out (M,): index into those text tokens of each image token's best cosine
    similarity when it reaches ``threshold`` (ties to the lowest index), else -1. The
    model's CPU path uses it to read the text rows in place. Sums run in float64 (in any
    order, so that they vectorise); the tensor path sums in the input dtype, so the two
    can differ only where two similarities, or a similarity and the threshold, agree to
    about 1e-7.
    """
    m, d = image.shape
    normed = np.empty((n_text, d), np.float64)  # unit text vectors
    for j in range(n_text):
        row = tokens[text_pos[j]]
        sq = 0.0
        for e in range(d):
            normed[j, e] = row[e]
            sq += normed[j, e] * normed[j, e]
        norm = max(np.sqrt(sq), 1e-8)
        for e in range(d):
            normed[j, e] /= norm
    x = np.empty(d, np.float64)
    for k in range(m):
        sq = 0.0
        for e in range(d):
            x[e] = image[k, e]
            sq += x[e] * x[e]
        norm = max(np.sqrt(sq), 1e-8)
        best, index = -np.inf, -1
        for j in range(n_text):
            dot = 0.0
            for e in range(d):
                dot += x[e] * normed[j, e]
            if dot / norm > best:
                best, index = dot / norm, j
        out[k] = index if best >= threshold else -1


@numba.njit(cache=True)
def row_layout(ids, mask, has_mask, labels, has_labels, image_id, bos, has_bos, image_pos, text_pos, slots):
    """One prompt (T,): fills image_pos, text_pos and slots (each (T,)) from the left and
    returns (n_image, n_text); the rules are in :mod:`gpslib.prompt_layout`'s docstring."""
    n_image, n_text = 0, 0
    first, answer = True, False
    for p in range(ids.shape[0]):
        if has_mask and mask[p] == 0:
            continue
        if has_labels and labels[p] != -100:
            answer = True
        if ids[p] == image_id:
            image_pos[n_image] = p
            slots[n_image + n_text] = p
            n_image += 1
        elif not answer and not (first and has_bos and ids[p] == bos):
            text_pos[n_text] = p
            slots[n_image + n_text] = p
            n_text += 1
        first = False
    return n_image, n_text


@numba.njit(cache=True)
def layout_rows(ids, mask, has_mask, labels, has_labels, image_id, bos, has_bos):
    """:func:`row_layout` for every row: image_pos, text_pos, slots (B, T) and counts (B, 2)
    (n_image, n_text); text_pos is 0 and slots T past each row's count."""
    b, t = ids.shape
    image_pos = np.zeros((b, t), np.int64)
    text_pos = np.zeros((b, t), np.int64)
    slots = np.full((b, t), t, np.int64)
    counts = np.empty((b, 2), np.int64)
    for i in range(b):
        counts[i, 0], counts[i, 1] = row_layout(
            ids[i], mask[i if has_mask else 0], has_mask, labels[i if has_labels else 0], has_labels,
            image_id, bos, has_bos, image_pos[i], text_pos[i], slots[i])
    return image_pos, text_pos, slots, counts


@numba.njit(cache=True)
def cosine_rows(ids, mask, has_mask, labels, has_labels, image_id, bos, has_bos, table, threshold, after):
    """The fused CPU pass of :func:`gpslib.prompt_layout.cosine_sequence`. table (B*T + R, D): token embeddings
    (row i*T + p) then image features (row B*T + i*M + k). Returns order and source (B, T),
    the layout arrays, a status (0 done; 1 image token counts differ or are 0; 2 the feature
    rows R are not B*M; order and source are not filled then) and M, N."""
    b, t = ids.shape
    image_pos, text_pos, slots, counts = layout_rows(ids, mask, has_mask, labels, has_labels,
                                                      image_id, bos, has_bos)
    order = np.empty((b, t), np.int64)
    source = np.empty((b, t), np.int64)
    m, n = counts[0, 0], 0
    for i in range(b):
        n = max(n, counts[i, 1])
        if counts[i, 0] != m or m == 0:
            return order, source, image_pos, text_pos, slots, counts, 1, m, n
    if table.shape[0] - b * t != b * m:
        return order, source, image_pos, text_pos, slots, counts, 2, m, n
    assignment = np.empty(m, np.int64)
    sequence = np.empty(t + m, np.int64)
    for i in range(b):
        n_text = counts[i, 1]
        for p in range(t):  # every position keeps its token ...
            order[i, p] = p
            source[i, p] = i * t + p
        features = table[b * t + i * m: b * t + (i + 1) * m]  # (M, D)
        cosine_assignment_row(features, table[i * t: (i + 1) * t], text_pos[i], n_text, threshold, assignment)
        grouped_row(assignment, n_text, after, sequence[: m + n_text])
        for s in range(m + n_text):  # ... but the slots, which take Algorithm 1's sequence
            q = sequence[s]
            if q < m:  # image token q: its feature row
                order[i, slots[i, s]] = image_pos[i, q]
                source[i, slots[i, s]] = b * t + i * m + q
            else:
                order[i, slots[i, s]] = text_pos[i, q - m]
                source[i, slots[i, s]] = i * t + text_pos[i, q - m]
    return order, source, image_pos, text_pos, slots, counts, 0, m, n
