"""Cosine item-item kNN that scales to millions of users and items.

The similarity of items i and j is the cosine of their columns of the user x item matrix.
The full gram X'X is never built: items are processed in blocks whose multiply cost
(the sum, over each item's users, of how many items those users have) stays under a budget,
so a block's sparse product and its top-k selection fit in a bounded amount of memory.
Top-k per row is vectorised (one argsort of a composite row/score key per block).

A heavy user with thousands of items adds a term to every pair of their items (their cost is
quadratic in their history), and says little about any one pair; `max_user_items` keeps only
each user's strongest items for the similarities (None: all of them, the exact cosine).
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

log = logging.getLogger("hybridrec")

BLOCK_WORK = 40_000_000  # multiply-adds (and so at most this many products) per block


def _ordered(values: np.ndarray) -> np.ndarray:
    """float32 -> uint32 with the same order (the usual sign-flip trick)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000)).astype(np.uint32)


def top_per_row(indptr: np.ndarray, data: np.ndarray, k: int) -> np.ndarray:
    """Mask of the entries to keep so that each CSR row keeps its k largest values.

    Rows with at most k entries keep all; among values tied with a row's k-th largest, the
    first ones in the row are kept. Vectorised: one sort of (row, inverted value) keys packed
    into uint64 finds every long row's k-th largest value; a comparison keeps what beats it.
    """
    counts = np.diff(indptr)
    keep = np.ones(data.shape[0], dtype=bool)
    long_rows = np.nonzero(counts > k)[0]
    if long_rows.shape[0] == 0:
        return keep
    in_long = np.repeat(counts > k, counts)
    ordered = _ordered(data[in_long])
    long_counts = counts[long_rows]
    rank = np.repeat(np.arange(long_rows.shape[0], dtype=np.uint64), long_counts)
    keys = (rank << np.uint64(32)) | (~ordered).astype(np.uint64)
    keys.sort()
    starts = np.r_[0, np.cumsum(long_counts)[:-1]]
    kth = ~(keys[starts + k - 1] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    del keys
    threshold = kth[rank]
    above = ordered > threshold
    tied = ordered == threshold
    room = k - np.bincount(rank[above].astype(np.int64), minlength=long_rows.shape[0])
    seen = np.cumsum(tied)  # ties so far, over all long rows
    before_row = (seen - tied)[starts]  # ties before each row's first entry
    tie_rank = seen - 1 - before_row[rank]
    keep[in_long] = above | (tied & (tie_rank < room[rank]))
    return keep


def cap_user_items(matrix: sp.csr_matrix, max_items: int | None) -> sp.csr_matrix:
    """The matrix with each user's row cut to their `max_items` strongest entries."""
    if max_items is None or matrix.shape[0] == 0 or np.diff(matrix.indptr).max(initial=0) <= max_items:
        return matrix
    keep = top_per_row(matrix.indptr, matrix.data, max_items)
    coo = matrix.tocoo()
    capped = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=matrix.shape, dtype=matrix.dtype)
    log.info("item kNN: %d heavy users cut to their %d strongest items (%d of %d entries kept)",
             int((np.diff(matrix.indptr) > max_items).sum()), max_items, capped.nnz, matrix.nnz)
    return capped


def knn_matrix(matrix: sp.csr_matrix, neighbours: int, max_user_items: int | None = None,
               block_work: int = BLOCK_WORK) -> sp.csr_matrix:
    """Cosine item-item similarities, each item (row) keeping its `neighbours` strongest others."""
    x = cap_user_items(sp.csr_matrix(matrix, dtype=np.float32), max_user_items)
    x.sum_duplicates()
    n_items = x.shape[1]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    x = sp.csr_matrix(x @ sp.diags(scale, format="csr"), dtype=np.float32)
    x.eliminate_zeros()
    xt = x.T.tocsr()  # items x users
    user_nnz = np.diff(x.indptr).astype(np.float64)
    pattern = sp.csr_matrix((np.ones_like(xt.data, dtype=np.float64), xt.indices, xt.indptr), shape=xt.shape)
    work = np.asarray(pattern @ user_nnz).ravel()
    del pattern
    bounds = _blocks(work, block_work)
    rows, cols, vals = [], [], []
    for lo, hi in bounds:
        block = (xt[lo:hi] @ x).tocsr()  # (hi - lo) x items
        block.sort_indices()
        row_of = np.repeat(np.arange(lo, hi), np.diff(block.indptr))
        off_diagonal = (block.indices != row_of) & (block.data != 0)
        if not off_diagonal.all():
            block = _drop(block, off_diagonal)
            row_of = row_of[off_diagonal]
        keep = top_per_row(block.indptr, block.data, neighbours)
        rows.append(row_of[keep].astype(np.int32))
        cols.append(block.indices[keep].astype(np.int32))
        vals.append(block.data[keep].astype(np.float32))
        del block, row_of, keep
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    log.info("item kNN: %d items in %d blocks, %d similarities kept", n_items, len(bounds),
             sum(r.shape[0] for r in rows))
    # rows are "from" items: a user's score for j sums sim(i, j) over the items i they have
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n_items, n_items), dtype=np.float32)


def _drop(block: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """`block` without the entries where `keep` is False."""
    row_counts = np.diff(block.indptr)
    row_of = np.repeat(np.arange(block.shape[0]), row_counts)
    new_counts = np.bincount(row_of[keep], minlength=block.shape[0])
    indptr = np.r_[0, np.cumsum(new_counts)].astype(np.int64)
    return sp.csr_matrix((block.data[keep], block.indices[keep], indptr), shape=block.shape)


def _blocks(work: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Contiguous item ranges whose summed work stays under `budget` (one item at least)."""
    bounds, lo, n = [], 0, work.shape[0]
    cum = np.cumsum(work)
    while lo < n:
        base = cum[lo - 1] if lo else 0.0
        hi = int(np.searchsorted(cum, base + budget, side="right"))
        hi = max(hi, lo + 1)
        bounds.append((lo, min(hi, n)))
        lo = hi
    return bounds
