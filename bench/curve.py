# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scale curve: the same measurements of two benchmark runs at different pgbench scales, side by side.

For each measurement both runs have: its time at each scale and how much it grew, its ratio to the
reference at each scale and how much that moved, and the largest process of the collection (the module,
the archive command, its background pusher or prefetcher) at each scale. The verdicts are the issue's:
every ratio within 10 % of its value at the smaller scale, and no collection process above 200 MB.

    curve.py RUN.json [RUN.json ...] [--out bench/results/<date>-scale-curve.md]

The runs are grouped by scale (there must be two). Several runs of one scale are merged, a later one's
measurements replacing an earlier one's (a phase measured again, with more repeats or on a quieter
machine); a column names the larger-scale run each row comes from.
"""

import argparse
import json
import os

RATIO_DRIFT = 0.10
RSS_LIMIT_MB = 200.0
# The collection's own processes, as the benchmark's sampler labels them. The controller
# (ansible-playbook) is Ansible's, the server PostgreSQL's, the rest programs the collection starts.
COLLECTION_PROGRAMS = ('python', 'module (python)', 'archive command (python)',
                       'archive command (python), background')


def load(path):
    with open(path) as handle:
        return json.load(handle)


def collection_peak(entry):
    """(MB, program) of the largest collection process in one measurement, or (None, None)."""
    peaks = [(mb, program) for program, mb in (entry.get('peak_rss_by_program_mb') or {}).items()
             if program in COLLECTION_PROGRAMS]
    return max(peaks) if peaks else (None, None)


def rows(small, large):
    """One dict a measurement both runs have, in the larger run's order."""
    out = []
    for key, big in large['measurements'].items():
        little = small['measurements'].get(key)
        if not little or big.get('time_s') is None or little.get('time_s') is None:
            continue
        row = {'measurement': key, 'method': big.get('method', ''), 'reference': bool(big.get('reference')),
               'from': big.get('from', ''),
               'time_small': little['time_s'], 'time_large': big['time_s'],
               'growth': round(big['time_s'] / little['time_s'], 1) if little['time_s'] else None,
               'ratio_small': little.get('time_ratio'), 'ratio_large': big.get('time_ratio'),
               'rss_small': collection_peak(little), 'rss_large': collection_peak(big)}
        if row['ratio_small'] and row['ratio_large'] is not None:
            row['drift'] = round(row['ratio_large'] / row['ratio_small'] - 1, 3)
        out.append(row)
    return out


def _num(value, fmt='%.2f'):
    return '' if value is None else fmt % value


def markdown(small, large):
    table = rows(small, large)
    s, l = small['scale'], large['scale']
    lines = ['# Scale curve: pgbench scale %d and %d' % (s, l), '',
             'Runs: scale %d of %s (%d MB), scale %d of %s (%d MB); %s CPUs. Times are each run\'s median (the '
             'larger run repeated each pair %s time(s)); the ratio is to the reference of the same group in the '
             'same run; the largest collection process is the module, the archive command or its background '
             'process, whichever peaked highest.'
             % (s, small.get('started_at', '?')[:10], small['database']['size_bytes'] // 2 ** 20, l,
                large.get('started_at', '?')[:10], large['database']['size_bytes'] // 2 ** 20,
                large.get('host', {}).get('cpus', '?'), large.get('repeats', '?')), '',
             '| measurement | time s, scale %d | time s, scale %d | grew x | ratio, %d | ratio, %d | ratio moved '
             '| largest collection process MB, %d | %d | scale-%d run |' % (s, l, s, l, s, l, l),
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for row in table:
        lines.append('| %s%s | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %s |' % (
            row['measurement'], ' (ref)' if row['reference'] else '', row['time_small'], row['time_large'],
            _num(row['growth'], '%.1f'), _num(row['ratio_small']), _num(row['ratio_large']),
            _num(row['drift'] * 100, '%+.0f %%') if 'drift' in row else '',
            _num(row['rss_small'][0], '%.1f'), _num(row['rss_large'][0], '%.1f'), row['from']))
    verdict = verdicts(table)
    lines += ['', '| target | value | met |', '|---|---|---|']
    for name, value, met in verdict:
        lines.append('| %s | %s | %s |' % (name, value, 'yes' if met else 'NO'))
    return '\n'.join(lines) + '\n'


def verdicts(table):
    """[(target, value text, met)]: each ratio within RATIO_DRIFT, and the largest collection process."""
    found = []
    for row in table:
        if 'drift' in row:
            found.append(('%s ratio within %d %% of scale-small' % (row['measurement'], RATIO_DRIFT * 100),
                          '%.2f -> %.2f (%+.0f %%)' % (row['ratio_small'], row['ratio_large'], row['drift'] * 100),
                          abs(row['drift']) <= RATIO_DRIFT))
    peaks = [(row['rss_large'][0], row['rss_large'][1], row['measurement']) for row in table
             if row['rss_large'][0] is not None]
    if peaks:
        mb, program, where = max(peaks)
        found.append(('every collection process < %d MB at the larger scale' % RSS_LIMIT_MB,
                      '%.1f MB (%s, %s)' % (mb, program, where), mb < RSS_LIMIT_MB))
    return found


def merge(runs):
    """One run from several of the same scale: later measurements replace earlier ones, each row says
    which file it came from (``from``)."""
    if len(set(run['scale'] for _path, run in runs)) != 1:
        raise SystemExit('curve: the runs to merge are not of one scale')
    merged = dict(runs[0][1], measurements={}, repeats=None)
    for path, run in runs:
        for key, entry in run['measurements'].items():
            if entry.get('time_s') is not None:
                merged['measurements'][key] = dict(entry, **{'from': os.path.basename(path)})
    merged['repeats'] = '/'.join(sorted(set(str(run.get('repeats', '?')) for _p, run in runs)))
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('runs', nargs='+', help='results JSON files of exactly two pgbench scales, each scale\'s '
                                                'in the order their measurements should replace one another')
    parser.add_argument('--out', help='default: the Markdown on standard output')
    args = parser.parse_args(argv)
    by_scale = {}
    for path in args.runs:
        run = load(path)
        by_scale.setdefault(run['scale'], []).append((path, run))
    if len(by_scale) != 2:
        raise SystemExit('curve: give runs of exactly two pgbench scales, not %s' % sorted(by_scale))
    small, large = [merge(by_scale[scale]) for scale in sorted(by_scale)]
    text = markdown(small, large)
    if args.out:
        with open(args.out, 'w') as handle:
            handle.write(text)
        print('curve: scale %d and %d -> %s' % (small['scale'], large['scale'], os.path.abspath(args.out)))
    else:
        print(text, end='')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
