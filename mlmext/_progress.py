"""A plain-text progress bar for simulation loops (bootstrap, power, PB test, cross-validation)."""
import sys
import time


class Progress:
    """A plain-text progress bar on stderr (no dependency)."""

    def __init__(self, total, enabled, label=""):
        self.total, self.enabled, self.label = int(total), bool(enabled), label
        self.t0 = time.time()
        self.k = 0
        self._last = -1.0

    def step(self, k=1):
        if not self.enabled:
            return
        self.k += k
        now = time.time()
        if self.k < self.total and now - self._last < 0.2:
            return
        self._last = now
        width = 30
        frac = self.k / max(self.total, 1)
        bar = "#" * int(round(width * frac))
        el = now - self.t0
        eta = el / frac - el if frac > 0 else float("nan")
        sys.stderr.write(f"\r{self.label}[{bar:<{width}}] {self.k}/{self.total} "
                         f"{el:6.1f}s elapsed, ~{eta:5.1f}s left")
        if self.k >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
