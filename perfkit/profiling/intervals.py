"""Interval arithmetic on (start, end) pairs in microseconds: overlapping events are never counted twice."""

from __future__ import annotations

from collections.abc import Iterable

# -- interval arithmetic on (start, end) pairs in microseconds ---------------------------------------


Intervals = list[tuple[float, float]]


def union(spans: Iterable[tuple[float, float]]) -> Intervals:
    """Sorted, disjoint intervals covering exactly the given ones."""
    merged: Intervals = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def intersect(a: Intervals, b: Intervals) -> Intervals:
    """Where both (disjoint, sorted) interval lists are covered."""
    result, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            result.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return result


def subtract(a: Intervals, b: Intervals) -> Intervals:
    """Where ``a`` is covered and ``b`` is not (both disjoint and sorted)."""
    result: Intervals = []
    j = 0
    for start, end in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        cursor, k = start, j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cursor:
                result.append((cursor, b[k][0]))
            cursor = max(cursor, b[k][1])
            k += 1
        if cursor < end:
            result.append((cursor, end))
    return result


def length(intervals: Intervals) -> float:
    return sum(end - start for start, end in intervals)


# -- the breakdown ------------------------------------------------------------------------------------
