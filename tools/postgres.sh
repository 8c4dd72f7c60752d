#!/usr/bin/env bash
# Install (once) and run a PostgreSQL 15 server with pgvector on loopback, for a team pool.
#
#   tools/postgres.sh start [--port P]   start it (installing what is missing); prints the pool URL last
#   tools/postgres.sh stop [--port P]    stop the server this script started on port P
#   tools/postgres.sh url [--port P]     print the pool URL of a running server
#   tools/postgres.sh kill [--port P]    stop it at once (`pg_ctl stop -m immediate`: no
#                                        checkpoint, as a crash), keeping its data
#   tools/postgres.sh restart [--port P] start a killed or stopped server again on its data
#
# PostgreSQL comes from the Debian packages `postgresql-15` and `postgresql-server-dev-15`.
# pgvector (PostgreSQL license) is built with PGXS from its Debian source package, fetched
# with `apt-get source pgvector` from the next Debian release (bookworm's own has no package
# new enough for halfvec); the build is cached under $UCTX_CACHE (default: ~/.cache/uctx)
# and installed into the server's directories on each machine. The cluster lives in
# ${TMPDIR:-/tmp}/uctx-postgres-PORT, owned by the `postgres` user, trusts loopback
# connections only, and is removed by `stop`.
set -euo pipefail

CACHE="${UCTX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/uctx}"
PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
SOURCE_SUITE="${UCTX_PGVECTOR_SUITE:-trixie}"
DB=uctx

say() { echo "postgres.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
    [ "$(id -u)" = 0 ] || die "installing needs root (run it as root, or install $* yourself)"
}

apt_install() {
    as_root "$@"
    say "installing $* (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
    } || die "apt-get install $* failed"
}

ensure_server() {
    [ -x "$PG_BIN/initdb" ] || apt_install "postgresql-$PG_MAJOR"
    # The server's headers and pg_config, for building pgvector with PGXS.
    [ -f "/usr/include/postgresql/$PG_MAJOR/server/postgres.h" ] || apt_install "postgresql-server-dev-$PG_MAJOR"
    command -v make >/dev/null 2>&1 || apt_install make
    command -v gcc >/dev/null 2>&1 || apt_install gcc
}

pg_config_bin() {
    if [ -x "$PG_BIN/pg_config" ]; then echo "$PG_BIN/pg_config"; else echo /usr/bin/pg_config; fi
}

ensure_pgvector() {
    local sharedir
    sharedir=$("$(pg_config_bin)" --sharedir)
    if ls "$sharedir"/extension/vector--*.sql >/dev/null 2>&1 \
        && [ -f "$("$(pg_config_bin)" --pkglibdir)/vector.so" ]; then
        return 0
    fi
    local src
    src=$(ls -d "$CACHE"/pgvector/pgvector-*/ 2>/dev/null | tail -1 || true)
    if [ -z "$src" ] || [ ! -f "$src/vector.so" ]; then
        as_root pgvector
        command -v dpkg-source >/dev/null 2>&1 || apt_install dpkg-dev
        local list=/etc/apt/sources.list.d/uctx-pgvector-src.sources
        if [ ! -f "$list" ]; then
            say "adding a source entry for Debian $SOURCE_SUITE (pgvector's source package)"
            printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                "$SOURCE_SUITE" >"$list"
            apt-get update -q >/dev/null 2>&1 || die "apt-get update failed (is the Debian mirror reachable?)"
        fi
        mkdir -p "$CACHE/pgvector"
        say "fetching pgvector's source (apt-get source pgvector)"
        (cd "$CACHE/pgvector" && apt-get source -q pgvector >/dev/null 2>&1) \
            || die "apt-get source pgvector failed (needs the deb-src entry in $list)"
        src=$(ls -d "$CACHE"/pgvector/pgvector-*/ | tail -1)
        say "building pgvector in $src (PGXS, about 30 s)"
        make -s -C "$src" PG_CONFIG="$(pg_config_bin)" OPTFLAGS="" >/dev/null 2>&1 \
            || die "building pgvector failed: run make -C $src PG_CONFIG=$(pg_config_bin) to see why"
    fi
    as_root "pgvector (make install)"
    make -s -C "$src" PG_CONFIG="$(pg_config_bin)" install >/dev/null \
        || die "installing pgvector failed"
}

data_dir() { echo "${TMPDIR:-/tmp}/uctx-postgres-$1"; }

url() { echo "postgres://postgres@127.0.0.1:$1/$DB"; }

run_pg() { # run_pg CMD ARGS... as the postgres user when we are root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

launch() { # launch PORT: start the server on its data directory
    local port="$1" dir
    dir=$(data_dir "$port")
    run_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -k $dir -c fsync=on" start >/dev/null \
        || die "the server did not start; see $dir/server.log"
}

start() {
    local port="$1" dir
    dir=$(data_dir "$port")
    ensure_server
    ensure_pgvector
    if [ -f "$dir/postmaster.pid" ] && run_pg "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        say "already running on port $port ($dir)"
        url "$port"
        return 0
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use; pick another with --port"
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    chmod 700 "$dir"
    run_pg "$PG_BIN/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null \
        || die "initdb failed in $dir"
    launch "$port"
    run_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -q -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE $DB" >/dev/null || die "cannot create the database $DB"
    run_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d "$DB" -q -v ON_ERROR_STOP=1 \
        -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null \
        || die "CREATE EXTENSION vector failed; see $dir/server.log"
    local version
    version=$(run_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d "$DB" -tA \
        -c "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    say "PostgreSQL $PG_MAJOR with pgvector $version on 127.0.0.1:$port (data in $dir)"
    url "$port"
}

stop() {
    local port="$1" dir
    dir=$(data_dir "$port")
    if [ -d "$dir" ]; then
        run_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$dir"
        say "stopped the server on port $port"
    fi
}

kill_now() {
    local port="$1" dir
    dir=$(data_dir "$port")
    [ -f "$dir/PG_VERSION" ] || die "no server of this script on port $port"
    run_pg "$PG_BIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null \
        || die "pg_ctl stop -m immediate failed; see $dir/server.log"
    say "killed the server on port $port (pg_ctl stop -m immediate; its data is kept in $dir)"
}

restart() {
    local port="$1" dir
    dir=$(data_dir "$port")
    [ -f "$dir/PG_VERSION" ] || die "no data of this script for port $port; use start"
    if run_pg "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        say "already running on port $port ($dir)"
    else
        launch "$port"
        say "restarted the server on port $port (data in $dir)"
    fi
    url "$port"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
port=15432
while [ $# -gt 0 ]; do
    case "$1" in
        --port) port="${2:?--port needs a number}"; shift 2;;
        *) die "unknown argument '$1'";;
    esac
done
case "$port" in ''|*[!0-9]*) die "--port must be a number, not '$port'";; esac

case "$cmd" in
    start) start "$port";;
    stop) stop "$port";;
    kill) kill_now "$port";;
    restart) restart "$port";;
    url) [ -f "$(data_dir "$port")/postmaster.pid" ] || die "no server of this script on port $port"; url "$port";;
    -h|--help|help) sed -n 2,17p "$0" | sed 's/^# \{0,1\}//';;
    *) die "unknown command '$cmd' (expected start, stop, kill, restart or url)";;
esac
