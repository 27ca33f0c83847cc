"""Temporary memory of the compiled executables, from XLA's own buffer assignment."""

from __future__ import annotations

from bench import peers
from bench.cases import Candidate

# Per-row bookkeeping (the max, the sums, normalisers, the per-row parameters of the tuned kernel's
# output formula, flags: up to 24 float32 per row) is not counted against us; any extra buffer that
# grows with the row length n is (n >= 1024 here, so one such buffer is >= 2 KiB per row).
ROW_SLACK_BYTES = 96


def within(ours: int | None, ref: int | None, batch: int) -> bool | None:
    """Whether ``ours`` temp bytes are no more than ``ref``'s plus the per-row allowance."""
    if ours is None or ref is None:
        return None
    return ours <= ref + ROW_SLACK_BYTES * batch


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
        slack = ROW_SLACK_BYTES * shape[0]
        ok = within(ours_b, ref_b, shape[0])
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
