"""A progress bar on stderr for long work, with log lines printed above it rather than into it."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A tqdm bar fed by batch reports (rows/s and ETA come from tqdm); a context manager.

    While it is open, log records go through tqdm (`logging_redirect_tqdm`), so a log line never lands
    in the middle of the bar's line. Off a terminal the bar is not drawn at all.
    """

    def __init__(self, total: int, desc: str) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.bar = tqdm(
            total=total, desc=desc, unit="rows", file=sys.stderr, dynamic_ncols=True, smoothing=0.1, disable=None
        )
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()

    def __call__(self, report: Any) -> None:
        self.bar.update(report.claimed)

    def close(self) -> None:
        self.bar.close()
        self._redirect.__exit__(None, None, None)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
