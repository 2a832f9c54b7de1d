#!/usr/bin/env bash
# Run ansible-test on this collection, offline:
#   ./scripts/ansible-test.sh sanity [ansible-test options...]
#   ./scripts/ansible-test.sh units  [ansible-test options...]
#   ./scripts/ansible-test.sh integration [ansible-test options...]
#     (starts a throwaway PostgreSQL 15 cluster with the sample database for the
#     targets in tests/integration/targets/, and removes it afterwards)
#
# ansible-test only accepts a collection that sits at a real
# ansible_collections/<namespace>/<name> path (the .collections/ symlink is not
# enough), so the working tree is copied to .cache/ansible-test/ and the tests
# run there, in virtual environments that ansible-test creates itself (--venv;
# there is no container runtime here, so --docker is not an option).
#
# Environment:
#   VENV                   virtualenv with ansible-core (default: <repo>/.venv)
#   ANSIBLE_TEST_PYTHON    Python version to test with (default: 3.11)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PYVER=${ANSIBLE_TEST_PYTHON:-3.11}

if [ $# -lt 1 ]; then
  echo "usage: $0 sanity|units|... [ansible-test options]" >&2
  exit 2
fi
subcommand=$1
shift

if [ ! -x "$VENV/bin/ansible-test" ]; then
  echo "ansible-test.sh: $VENV/bin/ansible-test is missing; run 'make bootstrap' first" >&2
  exit 1
fi

namespace=$(sed -n 's/^namespace:[[:space:]]*//p' galaxy.yml | tr -d "\"' ")
name=$(sed -n 's/^name:[[:space:]]*//p' galaxy.yml | tr -d "\"' ")
dest=$ROOT/.cache/ansible-test/ansible_collections/$namespace/$name

# --- 1. A real copy of the working tree -------------------------------------
# The copy is refreshed on every run so that it never keeps files deleted from
# the working tree; only its tests/output/ survives, because ansible-test keeps
# its delegation virtualenv there (tests/output/.tmp) and rebuilding that costs
# a pip bootstrap per run. tar is used rather than rsync because tar is on
# every machine and rsync is not.
mkdir -p "$dest"
find "$dest" -mindepth 1 -maxdepth 1 ! -name tests -exec rm -rf {} +
if [ -d "$dest/tests" ]; then
  find "$dest/tests" -mindepth 1 -maxdepth 1 ! -name output -exec rm -rf {} +
fi
# Local state (virtualenvs, the collection-path symlink, caches, the sandbox
# cluster, test results) is not part of the collection.
tar -C "$ROOT" -cf - \
  --exclude=./.venv --exclude=./.collections --exclude=./.cache --exclude=./.sandbox \
  --exclude=./.git --exclude=./tests/output \
  --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.pyc' --exclude='./*.tar.gz' \
  . | tar -C "$dest" -xf -

# --- 2. ansible-test's pip bootstrap script, without a download -------------
# Each virtualenv that ansible-test creates is made without pip and then
# bootstrapped with get-pip.py, downloaded from a host that is not reachable
# here and cached as ~/.ansible/test/cache/get_pip_<pip version>.py. The
# stand-in below does the same job with the interpreter's own ensurepip and
# then installs the pip version that ansible-test asks for from the package
# index. ansible-test runs it as `python get_pip_X_Y.py [pip options]
# pip==X.Y --no-setuptools --no-wheel`, like get-pip.py.
pip_version=$(cd / && "$VENV/bin/python" - "$PYVER" <<'EOF'
import sys
from ansible_test._internal.host_configs import NativePythonConfig
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(NativePythonConfig(version=sys.argv[1], path=sys.executable))['pip'])
EOF
) || { echo "ansible-test.sh: cannot tell which pip version ansible-test bootstraps" >&2; exit 1; }

cache_dir=$HOME/.ansible/test/cache
get_pip=$cache_dir/get_pip_${pip_version//./_}.py
marker='# modulo.pgbackup offline get-pip stand-in'
stand_in=$(cat <<EOF
$marker (v1)
"""Bootstrap pip the way get-pip.py does, from ensurepip instead of a download.

Usage: python $(basename "$get_pip") [pip install options] [requirements]
       [--no-setuptools] [--no-wheel]
"""
import importlib.util
import subprocess
import sys


def installed(name):
    return importlib.util.find_spec(name) is not None


def main():
    args = sys.argv[1:]
    no_setuptools = '--no-setuptools' in args
    no_wheel = '--no-wheel' in args
    args = [a for a in args if a not in ('--no-setuptools', '--no-wheel', '--no-pip')]
    had_setuptools = installed('setuptools')
    if not installed('pip'):
        # ensurepip ships with CPython and needs no network.
        subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'])
    requirements = [a for a in args if not a.startswith('-')]
    if not any(r.lower().startswith('pip') and not r[3:4].isalnum() for r in requirements):
        args.append('pip')
    if not no_setuptools and not any(r.lower().startswith('setuptools') for r in requirements):
        args.append('setuptools')
    if not no_wheel and not any(r.lower().startswith('wheel') for r in requirements):
        args.append('wheel')
    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--upgrade'] + args)
    # ensurepip of Python < 3.12 also installs setuptools; get-pip.py with
    # --no-setuptools leaves an environment without it, so do the same.
    if no_setuptools and not had_setuptools:
        subprocess.check_call([sys.executable, '-m', 'pip', 'uninstall', '-y', '-q',
                               '--disable-pip-version-check', 'setuptools'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
EOF
)
mkdir -p "$cache_dir"
# A genuine get-pip.py already in the cache (from a machine with more network)
# is kept; an older copy of this stand-in is replaced.
if [ ! -f "$get_pip" ] || { head -n1 "$get_pip" | grep -qF "$marker" && [ "$(cat "$get_pip")" != "$stand_in" ]; }; then
  printf '%s\n' "$stand_in" > "$get_pip.tmp"
  mv "$get_pip.tmp" "$get_pip"
fi

# --- 3. Integration targets: a real cluster -----------------------------------
# The targets in tests/integration/targets/ run the modules against a throwaway
# PostgreSQL 15 cluster (tools/pgsandbox.py, as for `make demo` and the pytest
# fixtures) on a free port. ansible-test passes tests/integration/integration_config.yml
# to every target as extra variables; it is written into the copy only.
if [ "$subcommand" = integration ]; then
  it_dir=$(mktemp -d /tmp/modulo-pgbackup-it-XXXXXX)
  chmod 0755 "$it_dir"          # the server runs as postgres when we are root
  # shellcheck disable=SC2317  # run by the trap
  cleanup_cluster() { "$VENV/bin/python" "$ROOT/tools/pgsandbox.py" stop "$it_dir/pg" >/dev/null 2>&1 || true; rm -rf "$it_dir"; }
  trap cleanup_cluster EXIT
  port=$("$VENV/bin/python" "$ROOT/tools/pgsandbox.py" start "$it_dir/pg" \
         | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["port"])')
  bindir=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
  PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres "$bindir/createdb" modulodb
  PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres "$bindir/psql" -Xq -v ON_ERROR_STOP=1 \
    -f "$ROOT/tests/data/modulo_schema.sql" modulodb >/dev/null
  if [ "$(id -u)" = 0 ]; then
    owner=postgres run_as='["runuser", "-u", "postgres", "--"]'
  else
    owner=$(id -un) run_as='[]'
  fi
  cat > "$dest/tests/integration/integration_config.yml" <<EOF
---
pgbackup_it_dir: $it_dir
pgbackup_it_owner: $owner
pgbackup_it_run_as_server_user: $run_as
pgbackup_it_pgdata: $it_dir/pg/pg/data
pgbackup_it_conn:
  login_host: 127.0.0.1
  port: $port
  login_user: postgres
  pg_bindir: $bindir
EOF
fi

# --- 4. Run ansible-test in the copy ------------------------------------------
# The copy lies inside this git checkout, under an ignored directory: left to
# itself ansible-test would take the enclosing repository as its source and
# list no files at all. Naming the content root makes it list the copy's files.
export ANSIBLE_TEST_CONTENT_ROOT=$dest
export PATH=$VENV/bin:$PATH

# Every sanity test runs offline once the stand-in above is cached (their
# requirements come from the package index like everything else), so none is
# skipped. shellcheck is only run when the program is installed; ansible-test
# prints a warning and goes on without it.
cd "$dest"
set +e
"$VENV/bin/ansible-test" "$subcommand" --venv --python "$PYVER" "$@"
status=$?
set -e
if [ $status -ne 0 ]; then
  echo "ansible-test.sh: ansible-test $subcommand failed (exit $status); results in $dest/tests/output" >&2
fi
exit $status
