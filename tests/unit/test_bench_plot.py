# -*- coding: utf-8 -*-
"""bench/plot.py: the ratio history image read back as SVG (XML), from a Markdown run and a JSON run."""

import importlib.util
import json
import os
import shutil
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location('bench_plot', os.path.join(ROOT, 'bench', 'plot.py'))
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)
SVG = '{http://www.w3.org/2000/svg}'


def test_history_joins_markdown_and_json_runs_in_date_order(tmp_path):
    # The run of 2026-11-26 is on record as Markdown only; a later run as JSON.
    shutil.copy(os.path.join(ROOT, 'bench', 'results', '2026-11-26.md'), str(tmp_path))
    later = {'scale': 100, 'targets': [
        {'measurement': 'logical_restore.backup_restore_default', 'field': 'time_ratio', 'target': '<= 0.9',
         'value': 0.88, 'met': True},
        {'measurement': 'archive_async_push.project', 'field': 'rate_ratio', 'target': '>= 1.5', 'value': 1.1,
         'met': False},
        {'measurement': 'archive_load.project', 'field': 'ready_backlog_peak', 'target': '<= 2', 'value': 1,
         'met': True},
        {'measurement': 'pitr_s3.backup_restore', 'field': 'time_ratio', 'target': '<= 1.0', 'value': None,
         'met': None}]}
    (tmp_path / '2026-12-04.json').write_text(json.dumps(later))
    # A run at another scale: a point of its own line, not the next step of the scale-100 history.
    larger = {'scale': 1000, 'targets': [
        {'measurement': 'logical_restore.backup_restore_default', 'field': 'time_ratio', 'target': '<= 0.9',
         'value': 0.86, 'met': True}]}
    (tmp_path / '2026-12-04-scale1000.json').write_text(json.dumps(larger))
    history = plot.runs(str(tmp_path))
    assert [run[0] for run in history] == ['2026-11-26', '2026-12-04', '2026-12-04-scale1000'] and history[0][1] == 100
    assert history[0][2][('logical_restore.backup_restore_default', 'time_ratio')] == (1.21, '<=', 0.5)

    out = tmp_path / 'ratio-history.svg'
    assert plot.main(['--results', str(tmp_path), '--out', str(out)]) == 0
    root = ET.parse(str(out)).getroot()
    panels = dict(((g.get('data-measurement'), g.get('data-field')), g) for g in root.iter(SVG + 'g'))
    # Ratios only (not the backlog count), and nothing for a target never measured.
    assert ('archive_load.project', 'ready_backlog_peak') not in panels
    assert ('pitr_s3.backup_restore', 'time_ratio') not in panels
    both = panels[('logical_restore.backup_restore_default', 'time_ratio')]
    lines = dict((line.get('data-scale'), line) for line in both.iter(SVG + 'polyline'))
    assert sorted(lines) == ['100', '1000']
    assert len(lines['100'].get('points').split()) == 2 and len(lines['1000'].get('points').split()) == 1
    assert lines['100'].get('stroke') != lines['1000'].get('stroke')
    # Each point says its run, scale and value, and its colour whether it met the target of the latest run.
    marks = [(c.find(SVG + 'title').text, c.get('fill')) for c in both.iter(SVG + 'circle')]
    assert marks == [('2026-11-26, scale 100: 1.21', '#c00'), ('2026-12-04, scale 100: 0.88', '#093'),
                     ('2026-12-04-scale1000, scale 1000: 0.86', '#093')]
    assert [t.text for t in root.iter(SVG + 'text') if t.get('class') == 'legend'] == ['scale 100', 'scale 1000']
    only_new = panels[('archive_async_push.project', 'rate_ratio')]
    assert len(only_new.find(SVG + 'polyline').get('points').split()) == 1
    assert only_new.find(SVG + 'line').get('class') == 'target'
