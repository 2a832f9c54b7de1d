#!/usr/bin/env python3
"""Print what the demo did, checking the restore independently of the modules.

Usage: demo_summary.py BACKUP_ROOT SOURCE_DB RESTORED_DB  (PG* env points at the server)
"""
import glob
import json
import os
import subprocess
import sys

BIN = '/usr/lib/postgresql/15/bin'


TABLES_SQL = ("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")


def psql(db, sql):
    return subprocess.check_output([BIN + '/psql', '-XAtq', '-d', db, '-c', sql]).decode()


def counts(db):
    result = {}
    for table in psql(db, TABLES_SQL).split():
        schema, name = table.split('.', 1)
        result[table] = int(psql(db, 'SELECT count(*) FROM "%s"."%s"' % (schema, name)))
    return result


def main():
    root, source, restored = sys.argv[1:4]
    metas = sorted(glob.glob(os.path.join(root, 'full', '*.meta')))
    with open(metas[-1]) as handle:
        meta = json.load(handle)
    got = counts(restored)
    print('   backed up : database %s -> %s' % (meta['database'], os.path.join(root, 'full', meta['file'])))
    print('   size      : %.1f KiB (%s, %s), sha256 %s...'
          % (meta['size_bytes'] / 1024.0, meta['format'], meta['compression'], meta['sha256'][:16]))
    print('   duration  : %.2f s, finished %s' % (meta['duration_s'], meta['finished_at']))
    print('   restored  : into %s' % restored)
    ok = True
    for table in sorted(meta['table_rows']):
        match = got.get(table) == meta['table_rows'][table]
        ok = ok and match
        print('     %-24s backup %6d  restored %6s  %s'
              % (table, meta['table_rows'][table], got.get(table), 'match' if match else 'MISMATCH'))
    extra = set(got) - set(meta['table_rows'])
    if extra:
        ok = False
        print('     unexpected tables in the restore: %s' % ', '.join(sorted(extra)))
    print('   result    : %s' % ('row counts match the backup' if ok else 'ROW COUNTS DIFFER'))
    print('   backups   : %d in %s' % (len(metas), os.path.join(root, 'full')))
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
