"""A DataFrame's columns as one model build reads them."""
from __future__ import annotations

__all__ = ["FrameColumns"]


class FrameColumns:
    """``data[name]`` for one build, each column fetched once: a DataFrame's column access
    costs ~15 us (the label is looked up through the columns Index), and a build reads the
    grouping columns three times.  Lives as long as the build (the frame is not changed
    during it)."""

    __slots__ = ("data", "series")

    def __init__(self, data, series=None):
        self.data = data
        self.series = {} if series is None else series

    def __getitem__(self, name):
        s = self.series.get(name)
        if s is None:
            s = self.series[name] = self.data[name]
        return s
