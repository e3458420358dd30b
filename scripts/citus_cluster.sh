#!/bin/sh
# A Citus coordinator and two workers on loopback, for trying the schema and the storage
# tests on Citus (docs/scaling.md, "Citus on this machine"). Not for production: every
# node trusts every connection from 127.0.0.1, and listens on nothing else.
#
#   scripts/citus_cluster.sh start    # init (first time) and start the three nodes
#   scripts/citus_cluster.sh stop     # stop them (nothing running: nothing to do)
#   scripts/citus_cluster.sh status
#
# Needs PostgreSQL with Citus installed (shared_preload_libraries='citus'). Settings, from
# the environment: PG_BIN (/usr/lib/postgresql/15/bin), CITUS_DIR (/tmp/citus-cluster),
# CITUS_PORTS ("55432 55433 55434": the coordinator's first), CITUS_USER (the OS user the
# nodes run as when started by root: postgres). The coordinator's DSN, once started:
#   postgresql://<user>@127.0.0.1:55432/postgres
set -eu

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
CITUS_DIR=${CITUS_DIR:-/tmp/citus-cluster}
CITUS_PORTS=${CITUS_PORTS:-"55432 55433 55434"}
CITUS_USER=${CITUS_USER:-postgres}
HOST=127.0.0.1
WAIT=60  # seconds pg_ctl waits for a node to start or stop

as_owner() {  # run a command as the nodes' OS user (PostgreSQL refuses to run as root)
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$CITUS_USER" -- "$@"
    else
        "$@"
    fi
}

db_user() {
    if [ "$(id -u)" = 0 ]; then echo "$CITUS_USER"; else id -un; fi
}

sql() {  # sql PORT STATEMENT: one statement on a node's postgres database
    PGOPTIONS="-c client_min_messages=warning" as_owner "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At -h "$HOST" -p "$1" \
        -U "$(db_user)" -d postgres -c "$2"
}

init_node() {  # init_node DIR PORT
    [ -f "$1/PG_VERSION" ] && return 0
    as_owner "$PG_BIN/initdb" -D "$1" -A trust -U "$(db_user)" -E UTF8 --locale=C.UTF-8 >"$1.initdb.log"
    cat >>"$1/postgresql.conf" <<EOF
# scripts/citus_cluster.sh
listen_addresses = '$HOST'
port = $2
unix_socket_directories = '$CITUS_DIR'
shared_preload_libraries = 'citus'
max_worker_processes = 64
max_connections = 200
EOF
    # Loopback only, trusted: a throwaway cluster for tests.
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$1/pg_hba.conf"
}

start() {
    mkdir -p "$CITUS_DIR"
    chown "$CITUS_USER" "$CITUS_DIR" 2>/dev/null || true
    for port in $CITUS_PORTS; do
        dir="$CITUS_DIR/node-$port"
        as_owner mkdir -p "$dir"
        chmod 700 "$dir"
        init_node "$dir" "$port"
        if as_owner "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
            echo "node $port: running"
        else
            as_owner "$PG_BIN/pg_ctl" -D "$dir" -l "$dir.log" -w -t "$WAIT" start >/dev/null
            echo "node $port: started"
        fi
        sql "$port" "CREATE EXTENSION IF NOT EXISTS citus"
    done
    set -- $CITUS_PORTS
    coordinator=$1
    shift
    sql "$coordinator" "SELECT citus_set_coordinator_host('$HOST', $coordinator)" >/dev/null
    for port in "$@"; do
        known=$(sql "$coordinator" \
            "SELECT count(*) FROM pg_dist_node WHERE nodename = '$HOST' AND nodeport = $port")
        [ "$known" = 0 ] && sql "$coordinator" "SELECT citus_add_node('$HOST', $port)" >/dev/null
    done
    sql "$coordinator" "SELECT nodename || ':' || nodeport || ' ' || noderole || CASE WHEN groupid = 0 THEN ' (coordinator)' ELSE '' END FROM pg_dist_node ORDER BY groupid"
    echo "coordinator: postgresql://$(db_user)@$HOST:$coordinator/postgres"
}

stop() {
    for port in $CITUS_PORTS; do
        dir="$CITUS_DIR/node-$port"
        if [ -f "$dir/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
            as_owner "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t "$WAIT" stop >/dev/null
            echo "node $port: stopped"
        fi
    done
}

status() {
    for port in $CITUS_PORTS; do
        dir="$CITUS_DIR/node-$port"
        if [ -f "$dir/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
            echo "node $port: running"
        else
            echo "node $port: stopped"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
