"""Progress of a run: the tqdm bar's text per round and the per-round wall-clock split."""
from __future__ import annotations

import time

from .chain import Chain
from .solver import RoundInfo

__all__ = ["progress_bar", "round_postfix", "RoundTimes"]


def progress_bar(total: int, desc: str, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def round_postfix(info: RoundInfo, rows: int) -> dict:
    """The bar's postfix after a round: the rows accepted where the solver says (triangular), else
    its residual, named as what it is (not the image's error: that is shown at the end)."""
    prefix = info.extra.get("prefix") if isinstance(info.extra, dict) else None
    if prefix:
        return {"rows accepted": f"{min(prefix)}/{rows}"}
    return {"residual": f"{info.residual:.2e}"}


class RoundTimes:
    """Per-round wall-clock split into network / replay / bookkeeping, from the chain's timers."""

    def __init__(self, chain: Chain):
        self.chain, self.rounds = chain, []
        self._last = (time.perf_counter(), dict(getattr(chain, "timings", {})))

    def wrap(self, callback):
        def on_round(info: RoundInfo) -> None:
            now, timings = time.perf_counter(), dict(getattr(self.chain, "timings", {}))
            then, before = self._last
            part = {k: timings.get(k, 0.0) - before.get(k, 0.0) for k in ("network", "replay")}
            part["total"] = now - then
            part["bookkeeping"] = max(0.0, part["total"] - part["network"] - part["replay"])
            self.rounds.append(part)
            callback(info)
            self._last = (time.perf_counter(), dict(getattr(self.chain, "timings", {})))
        return on_round
