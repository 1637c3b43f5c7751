#!/usr/bin/env bash
# Install the PostgreSQL server (initdb, pg_ctl, postgres) that tests/test_tune.py's PostgreSQL test starts a
# throwaway cluster with (tests/postgres.py). Idempotent: does nothing when initdb is already there; installs
# Debian's postgresql package when run as root with apt-get; otherwise says what to install and leaves it.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  echo "install_postgres.sh: installed $(compgen -G '/usr/lib/postgresql/*/bin/initdb' | head -n1)"
else
  echo "install_postgres.sh: no PostgreSQL initdb here and no root + apt-get to install it; install the" \
       "postgresql package (Debian/Ubuntu) for tests/test_tune.py's PostgreSQL test" >&2
fi
