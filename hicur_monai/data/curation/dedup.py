"""De-duplication of curated images: exact (content hash) and near (perceptual hash).

Rows are visited in a fixed order (source path, then slice), so the *first* copy is kept
whatever order the workers finished in, and a resumed or sharded-then-merged run keeps
the same one. Near duplicates are sought with multi-index hashing: the 64-bit pHash is cut
into ``threshold + 1`` blocks, and two hashes within ``threshold`` bits agree exactly on at
least one block (pigeonhole), so only images sharing a block are compared. Near duplicates
are only sought between images of the same modality and sequence and of different groups
(series / volume files): neighbouring slices of one volume are similar by nature, not copies.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from hicur_monai.data.curation.reasons import ACCEPTED, DUPLICATE

__all__ = ["DEFAULT_NEAR_THRESHOLD", "NearDuplicateIndex", "deduplicate", "sort_rows"]

#: Hamming distance (of 64 pHash bits) at or below which two images are near duplicates
DEFAULT_NEAR_THRESHOLD = 4


class NearDuplicateIndex:
    """Find an earlier hash within ``threshold`` bits (multi-index hashing)."""

    def __init__(self, threshold: int = DEFAULT_NEAR_THRESHOLD) -> None:
        if not 0 <= threshold < 32:
            raise ValueError(f"near-duplicate threshold must be in [0, 32), got {threshold}")
        self.threshold = threshold
        n = threshold + 1
        widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
        self._shifts = []
        pos = 0
        for w in widths:
            self._shifts.append((pos, (1 << w) - 1))
            pos += w
        self._tables: list[dict[int, list[int]]] = [defaultdict(list) for _ in widths]
        self._hashes: list[int] = []
        self._payload: list[tuple[str, str]] = []  # (group, key)

    def query(self, h: int, group: str) -> str | None:
        """Key of an earlier entry of another group within the threshold, else ``None``."""
        seen: set[int] = set()
        for (shift, mask), table in zip(self._shifts, self._tables):
            for j in table.get((h >> shift) & mask, ()):
                if j in seen:
                    continue
                seen.add(j)
                g, key = self._payload[j]
                if g != group and (self._hashes[j] ^ h).bit_count() <= self.threshold:
                    return key
        return None

    def add(self, h: int, group: str, key: str) -> None:
        j = len(self._hashes)
        self._hashes.append(h)
        self._payload.append((group, key))
        for (shift, mask), table in zip(self._shifts, self._tables):
            table[(h >> shift) & mask].append(j)


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The canonical manifest order: by source path, input row first, then slices."""
    order = df.assign(_t=(df["row_type"] == "image").astype(int),
                      _s=df["slice_index"].fillna(-1).astype(np.int64))
    order = order.sort_values(["source_path", "source_id", "_t", "_s"], kind="mergesort")
    return order.drop(columns=["_t", "_s"]).reset_index(drop=True)


def deduplicate(df: pd.DataFrame, threshold: int = DEFAULT_NEAR_THRESHOLD) -> pd.DataFrame:
    """Mark duplicates (returns a new, sorted DataFrame).

    Duplicate statuses from an earlier pass are reset first, so the result depends only on
    the set of rows (a merge of shards re-decides across shards).
    """
    df = sort_rows(df)
    dup = df["status"] == DUPLICATE
    df.loc[dup, "status"] = ACCEPTED
    df.loc[dup, ["reason", "detail", "duplicate_of"]] = ""
    status = df["status"].to_numpy(dtype=object).copy()
    reason = df["reason"].to_numpy(dtype=object).copy()
    detail = df["detail"].to_numpy(dtype=object).copy()
    dup_of = df["duplicate_of"].to_numpy(dtype=object).copy()
    is_input = (df["row_type"] == "input").to_numpy()
    src = df["source_id"].to_numpy(dtype=object)
    files: dict[str, str] = {}
    dup_inputs: dict[str, str] = {}
    for i in np.flatnonzero(is_input & (status == ACCEPTED)):
        fh = df.at[i, "file_hash"]
        if fh in files:
            status[i], reason[i], dup_of[i] = DUPLICATE, "exact_duplicate_file", files[fh]
            detail[i] = "byte-identical to an earlier input file"
            dup_inputs[src[i]] = files[fh]
        else:
            files[fh] = src[i]
    exact: dict[str, str] = {}
    near: dict[tuple[str, str], NearDuplicateIndex] = {}
    out_path = df["output_path"].to_numpy(dtype=object)
    img_sha = df["image_hash"].to_numpy(dtype=object)
    phash = df["phash"].to_numpy(dtype=object)
    group = df["group_id"].to_numpy(dtype=object)
    mods = df["modality"].to_numpy(dtype=object)
    seqs = df["sequence"].to_numpy(dtype=object)
    for i in np.flatnonzero(~is_input & (status == ACCEPTED)):
        if src[i] in dup_inputs:
            status[i], reason[i] = DUPLICATE, "exact_duplicate_file"
            detail[i] = "from an input file byte-identical to an earlier one"
        if img_sha[i] in exact:
            status[i], reason[i], dup_of[i] = DUPLICATE, reason[i] or "exact_duplicate", exact[img_sha[i]]
            if reason[i] == "exact_duplicate":
                detail[i] = "pixel-identical to an earlier image"
            continue
        if status[i] == DUPLICATE:
            continue
        idx = near.setdefault((mods[i], seqs[i]), NearDuplicateIndex(threshold))
        h = int(phash[i], 16)
        hit = idx.query(h, group[i])
        if hit is not None:
            status[i], reason[i], dup_of[i] = DUPLICATE, "near_duplicate", hit
            detail[i] = f"perceptual hash within {threshold} bits of an earlier image"
            continue
        exact[img_sha[i]] = out_path[i]
        idx.add(h, group[i], out_path[i])
    df["status"], df["reason"], df["detail"], df["duplicate_of"] = status, reason, detail, dup_of
    return df
