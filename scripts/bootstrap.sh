#!/usr/bin/env bash
# Install what `make demo` and `make test` need, idempotently:
#   Debian packages (PostgreSQL 15, compressors) when missing, a virtualenv with
#   the pinned Python packages, and the working tree on Ansible's collection path.
# Works as root (installs packages) and as a normal user (says what to ask for).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

need_pkgs=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_pkgs+=(postgresql-15 postgresql-client-15)
for tool in zstd lz4 pigz gzip tar shellcheck age; do
  command -v "$tool" >/dev/null 2>&1 || need_pkgs+=("$tool")
done
# runuser lives in /usr/sbin, which a normal user's PATH lacks.
[ -x /usr/sbin/runuser ] || command -v runuser >/dev/null 2>&1 || need_pkgs+=(util-linux)
# pgBackRest is the reference the benchmark (make bench) measures against.
command -v pgbackrest >/dev/null 2>&1 || need_pkgs+=(pgbackrest)
# The benchmark's S3 speaks TLS (pgBackRest speaks nothing else to S3), with a certificate made by openssl.
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
# The production-shaped tests (make production, molecule-production) build a host reached over ssh as a
# sudo deploy user: they run as root only, so a normal user is not asked for these.
if [ "$(id -u)" = 0 ]; then
  [ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
  [ -x /usr/bin/sudo ] || need_pkgs+=(sudo)
  command -v pg_createcluster >/dev/null 2>&1 || need_pkgs+=(postgresql-common)
  # The schedule role refuses to install cron jobs where no cron daemon is installed.
  [ -x /usr/sbin/cron ] || need_pkgs+=(cron)
  # promtool checks the health check's Prometheus textfile (the test skips without it).
  command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
fi
# The WAL archive command runs under the system python3 as postgres; S3 needs boto3 there.
/usr/bin/python3 -c 'import boto3' >/dev/null 2>&1 || need_pkgs+=(python3-boto3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages: ${need_pkgs[*]}" >&2
    echo "bootstrap: ask an administrator to run: apt-get install -y ${need_pkgs[*]}" >&2
    exit 1
  fi
fi

stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ]; then
  echo "bootstrap: creating virtualenv $VENV with pinned packages"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U 'pip>=23' 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 \
    | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c 'import ansible, boto3, moto, pytest' || { echo "bootstrap: pip install failed" >&2; exit 1; }
  touch "$stamp"
fi

# awx.awx, for playbooks/awx-configure.yml (and for linting and testing it): Galaxy is not
# reachable from every build machine, but the collection also ships inside the `ansible`
# package on PyPI. Only that collection is taken from the wheel, into .collections/.
awx_from=$(sed -n 's/^# awx.awx from: *//p' requirements-dev.txt)
awx_dir=.collections/ansible_collections/awx/awx
if [ -n "$awx_from" ] && [ "$(cat "$awx_dir/.from" 2>/dev/null)" != "$awx_from" ]; then
  echo "bootstrap: installing the awx.awx collection from $awx_from"
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "$awx_from" 2>&1 \
    | grep -v '^WARNING: Location' || true
  rm -rf "$awx_dir"
  mkdir -p .collections/ansible_collections/awx
  "$VENV/bin/python" - "$tmp" .collections <<'EOF'
import glob, sys, zipfile
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0])
members = [n for n in wheel.namelist() if n.startswith('ansible_collections/awx/awx/')]
if not members:
    sys.exit('bootstrap: no awx.awx collection in ' + wheel.filename)
wheel.extractall(sys.argv[2], members)
EOF
  rm -rf "$tmp"
  echo "$awx_from" > "$awx_dir/.from"
fi

# The working tree itself is the collection: link it where ansible.cfg looks.
mkdir -p .collections/ansible_collections/modulo
link=.collections/ansible_collections/modulo/pgbackup
if [ ! -L "$link" ]; then
  rm -rf "$link"
  ln -s ../../.. "$link"
fi
