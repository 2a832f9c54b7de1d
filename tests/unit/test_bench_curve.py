# -*- coding: utf-8 -*-
"""bench/curve.py: two runs at different scales side by side, and the issue's verdicts on them."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location('bench_curve', os.path.join(ROOT, 'bench', 'curve.py'))
curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(curve)


def run(scale, size_mb, **measurements):
    return {'scale': scale, 'repeats': 1, 'started_at': '2026-12-04T16:00:00Z', 'host': {'cpus': 2},
            'database': {'size_bytes': size_mb * 2 ** 20}, 'measurements': measurements}


def test_times_ratios_drift_and_the_largest_collection_process(tmp_path):
    small = run(100, 1500,
                **{'pitr.pgbackrest': {'time_s': 20.0, 'reference': True, 'method': 'pgbackrest'},
                   'pitr.backup_restore': {'time_s': 14.0, 'time_ratio': 0.70,
                                           'peak_rss_by_program_mb': {'python': 80.0, 'psql': 9.0}},
                   'logical_restore.backup_restore_default': {'time_s': 12.0, 'time_ratio': 0.94,
                                                              'peak_rss_by_program_mb': {'python': 30.0}},
                   'archive_push.project': {'time_s': 13.0}})
    large = run(1000, 15000,
                **{'pitr.pgbackrest': {'time_s': 200.0, 'reference': True, 'method': 'pgbackrest'},
                   'pitr.backup_restore': {'time_s': 150.0, 'time_ratio': 0.75,
                                           'peak_rss_by_program_mb': {'python': 120.0, 'zstd': 300.0,
                                                                      'archive command (python), background': 70.0}},
                   'logical_restore.backup_restore_default': {'time_s': 100.0, 'time_ratio': 0.80,
                                                              'peak_rss_by_program_mb': {'python': 31.0}}})
    for name, content in (('small.json', small), ('large.json', large)):
        (tmp_path / name).write_text(json.dumps(content))
    # The pitr phase measured again at the larger scale: its two rows come from that run, the rest from the first.
    again = run(1000, 15000,
                **{'pitr.pgbackrest': {'time_s': 180.0, 'reference': True, 'method': 'pgbackrest'},
                   'pitr.backup_restore': {'time_s': 135.0, 'time_ratio': 0.75,
                                           'peak_rss_by_program_mb': {'python': 120.0, 'zstd': 300.0}},
                   'logical_restore.backup_restore_default': {'time_s': None}})
    (tmp_path / 'again.json').write_text(json.dumps(again))
    out = tmp_path / 'curve.md'
    assert curve.main([str(tmp_path / 'small.json'), str(tmp_path / 'large.json'), str(tmp_path / 'again.json'),
                       '--out', str(out)]) == 0
    text = out.read_text()
    assert '# Scale curve: pgbench scale 100 and 1000' in text
    # Only what both runs measured; PostgreSQL's tools (zstd) are not the collection's processes.
    assert 'archive_push.project' not in text
    assert '| pitr.backup_restore | 14.00 | 135.00 | 9.6 | 0.70 | 0.75 | +7 % | 80.0 | 120.0 | again.json |' in text
    assert '| pitr.pgbackrest (ref) | 20.00 | 180.00 | 9.0 |' in text
    # A phase the later run did not measure keeps the first run's figures.
    assert '| logical_restore.backup_restore_default | 12.00 | 100.00 | 8.3 | 0.94 | 0.80 | -15 % | 30.0 | 31.0 | large.json |' in text
    # Grouped by scale, whatever the order of the files; one scale alone is no curve.
    assert curve.main([str(tmp_path / 'large.json'), str(tmp_path / 'small.json'), '--out', str(out)]) == 0
    assert out.read_text().startswith('# Scale curve: pgbench scale 100 and 1000')
    try:
        curve.main([str(tmp_path / 'large.json'), str(tmp_path / 'again.json')])
    except SystemExit as exc:
        assert 'exactly two pgbench scales' in str(exc)
    else:
        raise AssertionError('runs of one scale made a curve')
    verdicts = dict((name, (value, met)) for name, value, met in curve.verdicts(curve.rows(small, large)))
    assert verdicts['pitr.backup_restore ratio within 10 % of scale-small'] == ('0.70 -> 0.75 (+7 %)', True)
    # Better by 15 % is still not "within 10 %": the curve is about how costs grow, either way.
    assert verdicts['logical_restore.backup_restore_default ratio within 10 % of scale-small'] == \
        ('0.94 -> 0.80 (-15 %)', False)
    assert '| logical_restore.backup_restore_default ratio within 10 % of scale-small | 0.94 -> 0.80 (-15 %) | NO |' in text
    assert verdicts['every collection process < 200 MB at the larger scale'] == \
        ('120.0 MB (python, pitr.backup_restore)', True)
    assert '| every collection process < 200 MB at the larger scale | 120.0 MB (python, pitr.backup_restore) | yes |' in text
