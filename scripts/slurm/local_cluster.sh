#!/usr/bin/env bash
# A one-node Slurm cluster on this host, for the tests of the sbatch templates (tests/test_slurm.py).
#
#   scripts/slurm/local_cluster.sh start    # install slurm-wlm + munge if missing (root + apt), start
#                                           # munged, slurmctld, slurmd; a no-op when already up
#   scripts/slurm/local_cluster.sh status   # does the cluster answer (sinfo)?  exit 0 if yes
#   scripts/slurm/local_cluster.sh env      # prints `export SLURM_CONF=...` (eval "$(... env)")
#   scripts/slurm/local_cluster.sh stop     # cancel its jobs, stop the daemons by their pid files
#   scripts/slurm/local_cluster.sh stop --purge   # ... and delete the state folder
#
# Everything (slurm.conf, munge key and socket, spool, state, pids, logs) lives under
# LOCAL_SLURM_DIR (default /tmp/llava-restore-slurm); /etc/slurm and /etc/munge are not touched.
# Clients find the cluster through SLURM_CONF=$LOCAL_SLURM_DIR/etc/slurm.conf (see `env`).
# Exit status: 0 ok; 3 this host cannot run it (not root, no apt-get, install failed: the reason is
# printed); 1 anything else (see the logs under $LOCAL_SLURM_DIR/log).
#
# Environment: LOCAL_SLURM_DIR, LOCAL_SLURM_PORT (slurmctld port, slurmd uses +1; default 6817),
# LOCAL_SLURM_CPUS (CPUs of the node; default nproc, at least 2).  How it differs from a real cluster: docs/cluster.md.
set -euo pipefail

DIR="${LOCAL_SLURM_DIR:-/tmp/llava-restore-slurm}"
PORT="${LOCAL_SLURM_PORT:-6817}"
CONF="$DIR/etc/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket"
PARTITION=debug
CANNOT=3
export SLURM_CONF="$CONF"

say() { echo "[local_cluster] $*" >&2; }
cannot() { say "cannot start a local Slurm cluster: $*"; exit "$CANNOT"; }

pid_alive() {  # pid_alive NAME: the pid in $DIR/run/NAME.pid runs and is NAME (not a reused pid)
    local f="$DIR/run/$1.pid"
    [ -s "$f" ] && [ "$(cat "/proc/$(cat "$f")/comm" 2>/dev/null)" = "$1" ]
}

answers() {  # the controller answers and the node is usable
    command -v sinfo >/dev/null 2>&1 && [ -f "$CONF" ] && pid_alive slurmctld || return 1
    local state
    state=$(timeout 10 sinfo -h -N -o '%t' 2>/dev/null | head -n1) || return 1
    case "$state" in idle*|mix*|alloc*|comp*) return 0 ;; *) return 1 ;; esac
}

ensure_installed() {
    local missing=()
    for b in munged slurmctld slurmd sbatch; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || cannot "${missing[*]} not installed and not running as root (apt-get install slurm-wlm munge needs root)"
    command -v apt-get >/dev/null 2>&1 || cannot "${missing[*]} not installed and no apt-get on this host (install Slurm and munge yourself)"
    say "installing slurm-wlm and munge (missing: ${missing[*]})"
    mkdir -p "$DIR/log"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } \
            >"$DIR/log/apt.log" 2>&1; then
        tail -n 20 "$DIR/log/apt.log" >&2
        cannot "apt-get install slurm-wlm munge failed (log: $DIR/log/apt.log)"
    fi
}

write_conf() {
    local host cpus mem_mb
    host=$(hostname -s)
    # (GNU nproc obeys OMP_NUM_THREADS, which the tests set to 1; the node needs >= 2 CPUs for 2-rank jobs)
    cpus="${LOCAL_SLURM_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}"
    [ "$cpus" -ge 2 ] || cpus=2
    mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 9 / 10 / 1024 ))  # slurmd drains the node if it reports less
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
    cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm/local_cluster.sh: a one-node test cluster, state under $DIR.
ClusterName=llava-restore-local
SlurmctldHost=$host
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays the restart of a requeued job (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# the node's CPUs come from this file, not from the hardware (LOCAL_SLURM_CPUS may exceed nproc)
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
# finished jobs stay visible to scontrol (no accounting here) for an hour
MinJobAge=3600
KillWait=5
InactiveLimit=0
# schedule every 2 s (defaults: 60 s main loop, 30 s backfill): dependencies and requeues start promptly
SchedulerParameters=sched_interval=2,bf_interval=2
MailProg=/bin/true
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    local pidf="$DIR/run/munged.pid"
    pid_alive munged && return 0
    mkdir -p "$DIR/munge"
    chmod 755 "$DIR/munge"  # clients reach the socket; the key itself is mode 400
    if [ ! -s "$DIR/munge/munge.key" ]; then
        (umask 077 && head -c 1024 /dev/urandom >"$DIR/munge/munge.key")
        chmod 400 "$DIR/munge/munge.key"
    fi
    munged --force --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$pidf" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
        || { say "munged failed to start; log: $DIR/log/munged.log"; tail -n 5 "$DIR/log/munged.log" >&2; exit 1; }
    for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && return 0; sleep 0.1; done
    say "munged did not create $MUNGE_SOCKET"
    exit 1
}

start_daemon() {  # start_daemon NAME: slurmctld or slurmd
    local name=$1
    pid_alive "$name" && return 0
    "$name" -f "$CONF" || { say "$name failed to start; log: $DIR/log/$name.log"; tail -n 10 "$DIR/log/$name.log" >&2; exit 1; }
}

cmd_start() {
    if answers && pid_alive slurmd; then
        say "already running (SLURM_CONF=$CONF)"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || cannot "not running as root (the one-node set-up runs slurmd and the jobs as root)"
    ensure_installed
    if ! pid_alive slurmctld; then
        write_conf
    fi
    start_munge
    start_daemon slurmctld
    start_daemon slurmd
    for _ in $(seq 60); do
        if answers; then
            say "up: partition $PARTITION on $(hostname -s) (SLURM_CONF=$CONF)"
            return 0
        fi
        sleep 0.5
    done
    say "the cluster does not answer after 30 s; logs: $DIR/log"
    timeout 10 sinfo -N -l >&2 || true
    exit 1
}

stop_pid() {  # stop_pid NAME: SIGTERM the pid in its pid file, SIGKILL after 10 s
    local f="$DIR/run/$1.pid" pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if pid_alive "$1"; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$1 (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -9 "$pid"
        fi
    fi
    rm -f "$f"
}

cmd_stop() {
    if answers; then
        local jobs
        jobs=$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs || true
            for _ in $(seq 30); do [ -z "$(squeue -h -o '%A' 2>/dev/null)" ] && break; sleep 0.5; done
        fi
    fi
    stop_pid slurmd
    stop_pid slurmctld
    stop_pid munged
    if [ "${1:-}" = "--purge" ]; then
        rm -rf "$DIR"
        say "stopped; removed $DIR"
    else
        say "stopped (state and logs kept in $DIR)"
    fi
}

cmd_status() {
    if answers; then
        echo "local Slurm cluster up (SLURM_CONF=$CONF)"
        sinfo
        return 0
    fi
    echo "local Slurm cluster not answering (SLURM_CONF=$CONF)"
    for d in munged slurmctld slurmd; do
        if pid_alive "$d"; then echo "  $d: running (pid $(cat "$DIR/run/$d.pid"))"; else echo "  $d: not running"; fi
    done
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop "${2:-}" ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop [--purge]|status|env" >&2; exit 2 ;;
esac
