-- The backup role: what pg_dump, pg_basebackup, backup_info's server checks and verify mode need, and
-- nothing else. Run by psql as a superuser (or a role with CREATEROLE and ADMIN on the granted roles).
-- Every value comes from psql variables (-v) and the password from the environment (\getenv), so no
-- value is ever pasted into SQL text and the password is in no process argument.
-- Variables: role, replication (on|off), monitor (on|off), bypassrls (on|off), switch_wal (on|off),
-- update_password (always|on_create), check (0|1).
\set ON_ERROR_STOP on
\getenv password DB_ROLES_PASSWORD
\if :{?password}
\else
\set password ''
\endif
-- Keep the password out of the server log even where log_statement = all.
SET log_statement = 'none';
SET log_min_duration_statement = -1;
BEGIN;
SELECT set_config('db_roles.role', :'role', true), set_config('db_roles.password', :'password', true),
       set_config('db_roles.replication', :'replication', true), set_config('db_roles.monitor', :'monitor', true),
       set_config('db_roles.bypassrls', :'bypassrls', true), set_config('db_roles.switch_wal', :'switch_wal', true),
       set_config('db_roles.update_password', :'update_password', true) \gset dummy_
CREATE TEMP TABLE db_roles_changes (change text) ON COMMIT DROP;
DO $do$
DECLARE
    r text := current_setting('db_roles.role');
    pw text := current_setting('db_roles.password');
    want_repl boolean := current_setting('db_roles.replication')::boolean;
    want_monitor boolean := current_setting('db_roles.monitor')::boolean;
    want_bypassrls boolean := current_setting('db_roles.bypassrls')::boolean;
    want_switch boolean := current_setting('db_roles.switch_wal')::boolean;
    has_switch boolean;
    a pg_roles%ROWTYPE;
    wanted text[] := ARRAY['pg_read_all_data'];
    granted text;
BEGIN
    IF want_monitor THEN
        wanted := wanted || 'pg_monitor'::text;
    END IF;
    SELECT * INTO a FROM pg_roles WHERE rolname = r;
    IF NOT FOUND THEN
        EXECUTE format('CREATE ROLE %I LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE %s %s',
                       r, CASE WHEN want_repl THEN 'REPLICATION' ELSE 'NOREPLICATION' END,
                       CASE WHEN want_bypassrls THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END);
        INSERT INTO db_roles_changes VALUES (format('created role %s', r));
        IF pw <> '' THEN
            EXECUTE format('ALTER ROLE %I PASSWORD %L', r, pw);
            INSERT INTO db_roles_changes VALUES ('password set');
        END IF;
    ELSE
        -- Whatever else the role was given over time is taken back: it is dedicated to backups.
        IF a.rolsuper THEN
            EXECUTE format('ALTER ROLE %I NOSUPERUSER', r);
            INSERT INTO db_roles_changes VALUES ('removed SUPERUSER');
        END IF;
        IF a.rolcreatedb THEN
            EXECUTE format('ALTER ROLE %I NOCREATEDB', r);
            INSERT INTO db_roles_changes VALUES ('removed CREATEDB');
        END IF;
        IF a.rolcreaterole THEN
            EXECUTE format('ALTER ROLE %I NOCREATEROLE', r);
            INSERT INTO db_roles_changes VALUES ('removed CREATEROLE');
        END IF;
        IF a.rolbypassrls <> want_bypassrls THEN
            EXECUTE format('ALTER ROLE %I %s', r, CASE WHEN want_bypassrls THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END);
            INSERT INTO db_roles_changes VALUES (CASE WHEN want_bypassrls THEN 'added' ELSE 'removed' END || ' BYPASSRLS');
        END IF;
        IF NOT a.rolcanlogin THEN
            EXECUTE format('ALTER ROLE %I LOGIN', r);
            INSERT INTO db_roles_changes VALUES ('added LOGIN');
        END IF;
        IF NOT a.rolinherit THEN
            EXECUTE format('ALTER ROLE %I INHERIT', r);
            INSERT INTO db_roles_changes VALUES ('added INHERIT');
        END IF;
        IF a.rolreplication <> want_repl THEN
            EXECUTE format('ALTER ROLE %I %s', r, CASE WHEN want_repl THEN 'REPLICATION' ELSE 'NOREPLICATION' END);
            INSERT INTO db_roles_changes VALUES (CASE WHEN want_repl THEN 'added' ELSE 'removed' END || ' REPLICATION');
        END IF;
        IF pw <> '' AND current_setting('db_roles.update_password') = 'always' THEN
            EXECUTE format('ALTER ROLE %I PASSWORD %L', r, pw);
            INSERT INTO db_roles_changes VALUES ('password set');
        END IF;
    END IF;
    FOR granted IN
        SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
        WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = r) AND NOT g.rolname = ANY (wanted)
    LOOP
        EXECUTE format('REVOKE %I FROM %I', granted, r);
        INSERT INTO db_roles_changes VALUES (format('revoked membership in %s', granted));
    END LOOP;
    FOREACH granted IN ARRAY wanted LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = granted)
                       AND m.member = (SELECT oid FROM pg_roles WHERE rolname = r)) THEN
            EXECUTE format('GRANT %I TO %I', granted, r);
            INSERT INTO db_roles_changes VALUES (format('granted %s', granted));
        END IF;
    END LOOP;
    -- pg_switch_wal() lets a backup taken on a standby close its last WAL segment on the primary at once
    -- (otherwise it waits for archive_timeout). Only a grant to this role itself counts, and one given
    -- by hand is taken back when the option is off, like everything else.
    SELECT EXISTS (SELECT 1 FROM pg_proc p, aclexplode(p.proacl) x
                   WHERE p.oid = 'pg_catalog.pg_switch_wal()'::regprocedure AND x.privilege_type = 'EXECUTE'
                     AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = r)) INTO has_switch;
    IF want_switch AND NOT has_switch THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION pg_catalog.pg_switch_wal() TO %I', r);
        INSERT INTO db_roles_changes VALUES ('granted EXECUTE on pg_switch_wal()');
    ELSIF has_switch AND NOT want_switch THEN
        EXECUTE format('REVOKE EXECUTE ON FUNCTION pg_catalog.pg_switch_wal() FROM %I', r);
        INSERT INTO db_roles_changes VALUES ('revoked EXECUTE on pg_switch_wal()');
    END IF;
END
$do$;
\pset format unaligned
\pset tuples_only on
SELECT change FROM db_roles_changes;
-- Check mode: every statement above is transactional, so rolling back changes nothing.
\if :check
ROLLBACK;
\else
COMMIT;
\endif
