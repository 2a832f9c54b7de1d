# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is the archived WAL a continuous chain from a base backup to the newest segment?

A point-in-time recovery from base backup B replays every segment from B's
``wal_start`` on; one missing segment ends the recovery there, silently moving
the newest recoverable point back to the gap.  This finds such gaps before a
restore does, reading only names (and ``.history`` files) in the archive.

Which timeline a segment is read from follows PostgreSQL's own choice
(``XLogFileReadAnyTLI``): along the newest timeline's history, the newest
timeline that had already begun at that segment.  The segment holding a switch
point is therefore read from the new timeline; the old timeline's copy of it
is archived as ``.partial`` and is not used.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import names as walnames

# A chain report lists at most this many missing names; the count is always exact.
MAX_LISTED = 20


def parse_history(text, seg_size=walnames.WAL_SEG_SIZE):
    """Switch points of a ``.history`` file: ``[(parent timeline, first segment number of the child)]``.

    Each line is ``<parent tli> <switch LSN> <reason>``; comments and blank
    lines are skipped.  A line that is neither raises ValueError: a damaged
    history file is itself a recovery problem worth reporting.
    """
    points = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        fields = line.split(None, 2)
        if len(fields) < 2 or not fields[0].isdigit():
            raise ValueError('not a timeline history line: %r' % line)
        points.append((int(fields[0]), walnames.parse_lsn(fields[1]) // seg_size))
    return points


def timeline_starts(newest_tli, history_points):
    """``{timeline: first segment number}`` along the newest timeline's ancestry.

    The oldest ancestor starts at segment 0; a child starts at the segment of
    its parent's switch point.
    """
    starts = {}
    previous_start = 0
    for tli, _switch_seg in history_points:
        starts[tli] = previous_start
        previous_start = _switch_seg
    starts[newest_tli] = previous_start if history_points else 0
    return starts


def reading_timeline(segno, starts):
    """The timeline recovery reads segment ``segno`` from (newest that has begun)."""
    begun = [tli for tli, first in starts.items() if first <= segno]
    return max(begun) if begun else None


def check_chain(entries, base_wal_start, read_history, seg_size=walnames.WAL_SEG_SIZE):
    """Walk from ``base_wal_start`` to the newest archived segment; return a dict.

    ``entries`` are ``wal.archive.list_archive`` items (name and kind are used);
    ``read_history(name)`` returns the text of an archived ``.history`` file.
    The result has ``ok``, ``from``, ``to``, ``timeline``, ``segments``
    (expected in the chain), ``missing_count``, ``missing`` (the first names)
    and ``problem`` (a sentence, or None).
    """
    result = {'ok': False, 'from': base_wal_start, 'to': None, 'timeline': None, 'segments': 0,
              'missing_count': 0, 'missing': [], 'problem': None, 'reachable': None}
    base_tli, first = walnames.parse_segment_name(base_wal_start, seg_size)
    segments = set()
    timelines = set([base_tli])
    for entry in entries:
        if entry['kind'] == 'segment':
            tli, segno = walnames.parse_segment_name(entry['name'], seg_size)
            segments.add((tli, segno))
            timelines.add(tli)
        elif entry['kind'] == 'history':
            timelines.add(int(entry['name'][:8], 16))
    newest_tli = max(timelines)
    result['timeline'] = newest_tli
    if newest_tli > 1:
        history_name = '%08X.history' % newest_tli
        try:
            text = read_history(history_name)
        except (OSError, KeyError):
            text = None
        if text is None:
            result['problem'] = ('%s is missing from the archive: recovery cannot follow timeline %d'
                                 % (history_name, newest_tli))
            return result
        try:
            points = parse_history(text, seg_size)
        except ValueError as exc:
            result['problem'] = '%s is damaged: %s' % (history_name, exc)
            return result
    else:
        points = []
    starts = timeline_starts(newest_tli, points)
    if base_tli not in starts:
        result['problem'] = ('the base backup is on timeline %d, which is not in the history of the newest '
                             'timeline %d: it cannot recover to the newest point' % (base_tli, newest_tli))
        return result
    on_chain = [segno for tli, segno in segments if tli in starts and segno >= first]
    last = max(on_chain) if on_chain else first
    missing = []
    for segno in range(first, last + 1):
        tli = reading_timeline(segno, starts)
        if (tli, segno) not in segments:
            missing.append((tli, segno))

    def name(segno, tli=None):
        tli = reading_timeline(segno, starts) if tli is None else tli
        return walnames.segment_name(tli, segno * seg_size, seg_size)

    names = [name(n, tli) for tli, n in missing]
    result.update(segments=last - first + 1, missing_count=len(names), missing=names[:MAX_LISTED], to=name(last))
    # The last segment recovery can replay before the first gap: the end of the usable PITR window.
    if missing and missing[0][1] > first:
        result['reachable'] = name(missing[0][1] - 1)
    elif not missing:
        result['reachable'] = result['to']
    if names:
        result['problem'] = ('%d segment(s) missing, first %s: recovery from this base backup stops there'
                             % (len(names), names[0]))
    result['ok'] = not names
    return result
