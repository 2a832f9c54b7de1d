# -*- coding: utf-8 -*-
"""Base backups from a standby: what is read from the backup itself (label, manifest, the tar stream it
passes through) and the LSN the primary must write past for the backup's last segment to be archived."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import pgclient, physical_backup, standby

LABEL = """START WAL LOCATION: 0/5000028 (file 000000010000000000000005)
CHECKPOINT LOCATION: 0/5000060
BACKUP METHOD: streamed
BACKUP FROM: standby
START TIME: 2026-12-04 13:52:36 UTC
LABEL: modulo_base_20261204_135236
START TIMELINE: 1
"""


def manifest(*ranges):
    return json.dumps({'PostgreSQL-Backup-Manifest-Version': 1, 'Files': [],
                       'WAL-Ranges': [{'Timeline': t, 'Start-LSN': s, 'End-LSN': e} for t, s, e in ranges],
                       'Manifest-Checksum': '0' * 64})


def test_the_wal_range_of_a_manifest():
    assert physical_backup.manifest_points(manifest((1, '0/5000028', '0/6000100'))) == ('0/5000028', 1, '0/6000100')


def test_a_backup_across_a_promotion_starts_in_the_first_range_and_ends_in_the_last():
    text = manifest((1, '0/5000028', '0/7000000'), (2, '0/7000000', '0/7000200'))
    assert physical_backup.manifest_points(text) == ('0/5000028', 2, '0/7000200')


@pytest.mark.parametrize('text', ['', 'not json', '{}', json.dumps({'WAL-Ranges': []}), '[]'])
def test_a_manifest_without_a_wal_range_gives_none(text):
    assert physical_backup.manifest_points(text) is None


def test_the_fields_of_a_backup_label():
    fields = physical_backup.label_fields(LABEL)
    assert fields['START WAL LOCATION'] == '0/5000028'
    assert fields['BACKUP FROM'] == 'standby' and fields['START TIMELINE'] == '1'
    assert fields['LABEL'] == 'modulo_base_20261204_135236'


@pytest.mark.parametrize('stop, end', [
    ('0/6000100', '0/7000000'),
    ('0/7000000', '0/7000000'),     # the stop point opens segment 7: the last byte needed is in segment 6
    ('0/7000001', '0/8000000'),
    ('1/FF000028', '2/0'),
])
def test_the_primary_must_write_past_the_segment_of_the_last_byte_needed(stop, end):
    assert standby.segment_end(stop) == end


def tar_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo('pg_wal')
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    return buf.getvalue()


def run_tap(tmp_path, stream):
    outdir = tmp_path / 'kept'
    outdir.mkdir()
    proc = subprocess.run(physical_backup.tap_argv(str(outdir), python=sys.executable), input=stream,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    return proc, outdir


def test_the_tap_passes_the_tar_through_and_keeps_label_and_manifest(tmp_path):
    big = os.urandom(3 * 1024 * 1024 + 17)     # more than one read, not a multiple of 512
    stream = tar_bytes([('backup_label', LABEL.encode()), ('base/1/1259', big),
                        ('backup_manifest', manifest((1, '0/5000028', '0/6000100')).encode())])
    proc, outdir = run_tap(tmp_path, stream)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == stream
    assert sorted(os.listdir(str(outdir))) == ['backup_label', 'backup_manifest']
    start, tli, stop, label = physical_backup.tapped_points(str(outdir))
    assert (start, tli, stop) == ('0/5000028', 1, '0/6000100') and label['BACKUP FROM'] == 'standby'


def test_the_tap_fails_on_a_stream_cut_inside_a_member(tmp_path):
    stream = tar_bytes([('base/1/1259', os.urandom(100000))])
    proc, outdir = run_tap(tmp_path, stream[:50000])
    assert proc.returncode != 0 and b'truncated' in proc.stderr
    assert physical_backup.tapped_points(str(outdir)) is None


def test_without_a_manifest_in_the_stream_there_are_no_points(tmp_path):
    proc, outdir = run_tap(tmp_path, tar_bytes([('backup_label', LABEL.encode())]))
    assert proc.returncode == 0
    assert physical_backup.tapped_points(str(outdir)) is None


def test_a_primary_source_records_only_where_it_came_from():
    source = standby.Source(pgclient.Connection(login_host='db1', port=5432))
    assert not source.standby and source.archive_conn is source.conn
    assert source.meta_fields() == {'backup_from': 'primary'}
    assert source.close_segment('0/6000100') is None
