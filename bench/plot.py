# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The history of every benchmark ratio, as one SVG image (``make bench`` regenerates it).

Each run on record is a point: ``bench/results/<date>.json`` (the machine-readable results, committed), or,
for the runs from before those were kept, the target table of ``<date>.md``. One small chart per ratio
target, the target drawn as a dashed line, so a regression shows as a line crossing it; runs at another
pgbench scale (``<date>-scale1000.json``) get a line of their own colour. Pure standard
library: the image is plain SVG text.

    plot.py [--results bench/results] [--out bench/results/ratio-history.svg]
"""

import argparse
import glob
import json
import os
import re
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
# "| measurement field op limit | value | met |" rows of the Markdown's target table.
_TARGET_ROW = re.compile(r'^\| (?P<key>[a-z0-9_.]+) (?P<field>[a-z_]+) (?P<op><=|>=) (?P<limit>[0-9.]+) \| '
                         r'(?P<value>[0-9.]*) \| (?:yes|NO|not measured) \|$')
PANEL_W, PANEL_H, MARGIN, COLUMNS = 300, 170, 40, 3


def runs(results_dir):
    """[(date, scale, {(measurement, field): (value, op, limit)})], oldest first; JSON wins over Markdown."""
    found = {}
    for path in glob.glob(os.path.join(results_dir, '*.md')):
        date = os.path.basename(path)[:-3]
        targets, scale = {}, None
        with open(path) as handle:
            for line in handle:
                match = _TARGET_ROW.match(line.strip())
                if match and match.group('value'):
                    targets[(match.group('key'), match.group('field'))] = (
                        float(match.group('value')), match.group('op'), float(match.group('limit')))
                scale_match = re.match(r'^# Benchmark, pgbench scale (\d+)', line)
                if scale_match:
                    scale = int(scale_match.group(1))
        found[date] = (date, scale, targets)
    for path in glob.glob(os.path.join(results_dir, '*.json')):
        with open(path) as handle:
            results = json.load(handle)
        date = os.path.basename(path)[:-5]
        targets = {}
        for verdict in results.get('targets') or []:
            if verdict.get('value') is not None:
                op, limit = verdict['target'].split()
                targets[(verdict['measurement'], verdict['field'])] = (float(verdict['value']), op, float(limit))
        found[date] = (date, results.get('scale'), targets)
    return [found[date] for date in sorted(found)]


def _ratio_keys(history):
    keys = []
    for _date, _scale, targets in history:
        for key in targets:
            if key[1].endswith('ratio') and key not in keys:
                keys.append(key)
    return keys


LINE_COLOURS = ('#036', '#a50', '#609', '#066')


def _colour(scale, scales):
    return LINE_COLOURS[scales.index(scale or 0) % len(LINE_COLOURS)]


def svg(history):
    """The image: one panel per ratio target, points joined in date order."""
    keys = _ratio_keys(history)
    scales = sorted(set(run[1] or 0 for run in history))
    rows = max(1, (len(keys) + COLUMNS - 1) // COLUMNS)
    width, height = COLUMNS * PANEL_W, rows * PANEL_H + 30
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif" font-size="10">' % (width, height, width, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="8" y="18" font-size="13">modulo.pgbackup benchmark ratios, %d runs (%s to %s); dashed: target</text>'
           % (len(history), history[0][0] if history else '-', history[-1][0] if history else '-')]
    for index, scale in enumerate(scales):
        out.append('<text class="legend" x="%d" y="18" fill="%s">scale %s</text>'
                   % (width - 80 * (len(scales) - index), _colour(scale, scales), scale or '?'))
    for index, key in enumerate(keys):
        x0, y0 = (index % COLUMNS) * PANEL_W, 30 + (index // COLUMNS) * PANEL_H
        points = [(i, run[2][key]) for i, run in enumerate(history) if key in run[2]]
        limit, op = points[-1][1][2], points[-1][1][1]
        values = [value for _i, (value, _op, _limit) in points] + [limit]
        low, high = min(values + [0.0]), max(values) * 1.15 or 1.0
        plot_w, plot_h = PANEL_W - MARGIN - 12, PANEL_H - 50

        def at(i, value):
            x = x0 + MARGIN + (plot_w * i / float(max(1, len(history) - 1)) if len(history) > 1 else plot_w / 2.0)
            y = y0 + 22 + plot_h - plot_h * (value - low) / float(high - low)
            return x, y
        out.append('<g class="panel" data-measurement="%s" data-field="%s">' % (escape(key[0]), escape(key[1])))
        out.append('<text x="%d" y="%d">%s %s %s %s</text>' % (x0 + 6, y0 + 12, escape(key[0]), escape(key[1]),
                                                               escape(op), limit))
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>'
                   % (x0 + MARGIN, y0 + 22, plot_w, plot_h))
        for tick in (low, high):
            out.append('<text x="%d" y="%.1f" text-anchor="end">%.2f</text>' % (x0 + MARGIN - 3, at(0, tick)[1] + 3, tick))
        _lx, ly = at(0, limit)
        out.append('<line class="target" x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#c00" stroke-dasharray="4 3"/>'
                   % (x0 + MARGIN, ly, x0 + MARGIN + plot_w, ly))
        # One line per pgbench scale: a run at scale 1000 is a point on the scale curve, not a step in the
        # history of the scale-100 runs.
        for scale in sorted(set(history[i][1] or 0 for i, _v in points)):
            mine = [(i, value) for i, value in points if (history[i][1] or 0) == scale]
            coords = [at(i, value) for i, (value, _op, _limit) in mine]
            out.append('<polyline class="history" data-scale="%s" fill="none" stroke="%s" stroke-width="1.5" '
                       'points="%s"/>' % (scale or '', _colour(scale, scales),
                                          ' '.join('%.1f,%.1f' % xy for xy in coords)))
            for (x, y), (i, (value, _op, _limit)) in zip(coords, mine):
                met = value <= limit if op == '<=' else value >= limit
                out.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s, scale %s: %.2f</title></circle>'
                           % (x, y, '#093' if met else '#c00', history[i][0], scale or '?', value))
        out.append('<text x="%d" y="%d">%s</text>' % (x0 + MARGIN, y0 + PANEL_H - 12, escape(history[points[0][0]][0])))
        out.append('<text x="%d" y="%d" text-anchor="end">%s</text>'
                   % (x0 + MARGIN + plot_w, y0 + PANEL_H - 12, escape(history[points[-1][0]][0])))
        out.append('</g>')
    out.append('</svg>')
    return '\n'.join(out) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--results', default=os.path.join(HERE, 'results'))
    parser.add_argument('--out', default=None, help='default: <results>/ratio-history.svg')
    args = parser.parse_args(argv)
    history = runs(args.results)
    out = args.out or os.path.join(args.results, 'ratio-history.svg')
    with open(out, 'w') as handle:
        handle.write(svg(history))
    print('plot: %d runs, %d ratios -> %s' % (len(history), len(_ratio_keys(history)), out))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
