"""Temporary memory of the compiled executables, from XLA's own buffer assignment."""

from __future__ import annotations

from bench import peers
from bench.cases import FORWARD, Candidate
from jaxsoft import _tuned_subrows

# Per-row bookkeeping (the max, the sums, normalisers, the per-row parameters of the tuned kernel's
# output formula, flags: up to 24 float32 per row) is not counted against us; any extra buffer that
# grows with the row length n is (n >= 1024 here, so one such buffer is >= 2 KiB per row). Where
# the kernel views rows as sub-rows (logsumexp's forward below 4096 rows, jaxsoft._tuned_subrows),
# the allowance is per sub-row: at most 4096 of them, 384 KiB, whatever the row length.
ROW_SLACK_BYTES = 96


def bookkeeping_rows(family: str, mode: str, shape: tuple[int, int]) -> int:
    """How many (sub-)rows of per-row bookkeeping ``family`` may hold at ``shape``."""
    if family == "logsumexp" and mode == FORWARD:
        k = _tuned_subrows.subrow_count(shape)
        return shape[0] * (k or 1)
    return shape[0]


def within(ours: int | None, ref: int | None, rows: int) -> bool | None:
    """Whether ``ours`` temp bytes are no more than ``ref``'s plus the per-row allowance."""
    if ours is None or ref is None:
        return None
    return ours <= ref + ROW_SLACK_BYTES * rows


def temp_bytes(compiled) -> int | None:
    """``temp_size_in_bytes`` of a compiled executable: scratch beyond arguments and outputs."""
    analysis = compiled.memory_analysis()
    if analysis is None:  # some backends do not report it
        return None
    return int(analysis.temp_size_in_bytes)


def compare(cands: list[Candidate], dtype: str, shape: tuple[int, int]) -> list[dict]:
    """One row per (family, mode): our temp bytes against the reference peer's.

    ``ok`` is False when ours needs more scratch than the peer, beyond ``ROW_SLACK_BYTES`` per row;
    the run then exits non-zero.
    """
    by_key = {(c.family, c.impl, c.mode): c for c in cands if c.compiled is not None}
    rows = []
    for (family, impl, mode), cand in by_key.items():
        if impl != peers.OURS:
            continue
        ref_impl = peers.REFERENCE[family]
        ref = by_key.get((family, ref_impl, mode))
        ours_b = temp_bytes(cand.compiled)
        ref_b = None if ref is None else temp_bytes(ref.compiled)
        rows_kept = bookkeeping_rows(family, mode, shape)
        slack = ROW_SLACK_BYTES * rows_kept
        ok = within(ours_b, ref_b, rows_kept)
        rows.append(
            {
                "dtype": dtype,
                "shape": list(shape),
                "family": family,
                "mode": mode,
                "reference": ref_impl,
                "ours_temp_bytes": ours_b,
                "reference_temp_bytes": ref_b,
                "slack_bytes": slack,
                "ok": ok,
            }
        )
    return rows
