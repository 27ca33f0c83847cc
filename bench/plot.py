"""A PNG of the jaxsoft / reference time ratios, one panel per mode."""

from __future__ import annotations

from pathlib import Path

from bench import peers
from bench.cases import MODES


def ratios_png(timings: list[dict], path: Path, title: str) -> Path | None:
    """Draw the plot into ``path``; ``None`` (and no file) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")  # no display on CI or a server
    import matplotlib.pyplot as plt

    ours = [r for r in timings if r["impl"] == peers.OURS and r["ratio_to_reference"] is not None]
    families = [f for f in peers.FAMILIES if any(r["family"] == f for r in ours)]
    cases = sorted(
        {(r["dtype"], tuple(r["shape"])) for r in ours}, key=lambda c: (c[0] != "float32", c[1][-1])
    )
    fig, axes = plt.subplots(
        1, len(MODES), figsize=(6 * len(MODES), 4.5), sharey=True, squeeze=False
    )
    width = 0.8 / max(len(cases), 1)
    for ax, mode in zip(axes[0], MODES):
        for i, (dtype, shape) in enumerate(cases):
            vals = {
                r["family"]: r["ratio_to_reference"]
                for r in ours
                if r["mode"] == mode and r["dtype"] == dtype and tuple(r["shape"]) == shape
            }
            xs = [k + (i - (len(cases) - 1) / 2) * width for k in range(len(families))]
            ax.bar(
                xs,
                [vals.get(f, 0.0) for f in families],
                width,
                label=f"{dtype} {shape[0]}x{shape[1]}",
            )
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
        ax.set_xticks(range(len(families)))
        ax.set_xticklabels(families, rotation=20, ha="right")
        ax.set_title(mode)
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("median time, jaxsoft / reference (lower is better)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
