#!/usr/bin/env bash
# A real SLURM cluster on this machine, for `--runner slurm` (docs/scale.md) and its tests
# (tests/test_slurm.py): Debian's slurm-wlm and munge, SLURM_LOCAL_NODES nodes (default 2, one
# slurmd each, each with this machine's CPUs), one partition, every file (config, state, spool,
# logs, munge key and socket) in DIR.
#
#   scripts/slurm-local.sh start [DIR]   # install (root, apt) if missing, start munged, slurmctld, the slurmds;
#                                        # wait until sinfo shows the nodes idle; print the env to use it
#   eval "$(scripts/slurm-local.sh env [DIR])"   # SLURM_CONF=DIR/slurm.conf for sinfo, sbatch, the lab
#   scripts/slurm-local.sh stop [DIR]    # stop the daemons, remove DIR
#
# DIR defaults to /tmp/pretrainlab-slurm. Needs root: slurmd starts each job as its user, and
# the daemons here run as root. The ports are free ones picked at start, and the munge daemon is
# this cluster's own (its own key and socket), so a system SLURM or munge is left alone.
# Containers without cgroups work: proctrack/linuxproc tracks a job's processes by parentage,
# task/none binds nothing.
set -euo pipefail

cmd=${1:-}
DIR=${2:-/tmp/pretrainlab-slurm}
PARTITION=debug
READY_S=${SLURM_LOCAL_READY_S:-60}
# nodes: one slurmd each, all on this machine (slurmd -N), each with all its CPUs: runs see one machine and one
# filesystem wherever SLURM places them, and a node can be taken down on its own (the node-exclusion test)
NODES=${SLURM_LOCAL_NODES:-2}

die() { echo "slurm-local: $*" >&2; exit 1; }

install_slurm() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v sinfo >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root: apt-get install slurm-wlm munge as root"
    echo "slurm-local: installing Debian's slurm-wlm and munge" >&2
    local attempt
    for attempt in 1 2 3; do
        if apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >&2; then
            return 0
        fi
        echo "slurm-local: apt-get failed (attempt $attempt), retrying" >&2
        sleep $((attempt * 5))
    done
    die "could not install slurm-wlm and munge with apt-get"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
    [ -d "$DIR" ] || return 0
    local f pids=("$DIR"/slurmd-*.pid "$DIR/slurmctld.pid" "$DIR/munged.pid")
    for f in "${pids[@]}"; do
        if pid_alive "$f"; then kill "$(cat "$f")" 2>/dev/null || true; fi
    done
    for _ in $(seq 50); do  # up to 10 s for them to go
        local alive=0
        for f in "${pids[@]}"; do pid_alive "$f" && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for f in "${pids[@]}"; do
        if pid_alive "$f"; then kill -9 "$(cat "$f")" 2>/dev/null || true; fi
    done
    rm -rf "$DIR"
}

node_name() {  # node_name HOST I: the name of node I of the cluster
    if [ "$2" = 1 ]; then echo "$1"; else echo "$1-$2"; fi
}

write_conf() {
    local host cpus mem_mb ctld_port node
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    ctld_port=$(free_port)
    mkdir -p "$DIR/state" "$DIR/spool"
    cat >"$DIR/slurm.conf" <<EOF
# a cluster on one machine for pretrainlab (scripts/slurm-local.sh); everything lives in $DIR
ClusterName=pretrainlab
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s; below 5 a requeued job
# waited about 2 minutes here, slurm-wlm 22.05)
AuthInfo=socket=$DIR/munge.socket,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
# look at the queue every second (a requeued job starts as soon as its credential has expired)
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
# the seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or preempted: the trainer checkpoints
KillWait=30
# finished jobs stay visible to squeue -t all (and scontrol show job) this long
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
EOF
    local i names=""
    for i in $(seq "$NODES"); do  # node 1 is named after the machine, node i > 1 $host-i: each its own slurmd and port
        node=$(node_name "$host" "$i")
        echo "NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 Port=$(free_port) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN" >>"$DIR/slurm.conf"
        names=${names:+$names,}$node
    done
    echo "PartitionName=$PARTITION Nodes=$names Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >>"$DIR/slurm.conf"
    cat >"$DIR/env" <<EOF
export SLURM_CONF=$DIR/slurm.conf
EOF
}

start() {
    [ "$(id -u)" = 0 ] || die "the local cluster's daemons run as root (slurmd starts jobs as their user): run this as root"
    install_slurm
    stop  # a cluster left in DIR by an earlier start
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    write_conf
    # munge: this cluster's own key and socket
    dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge.key"
    munged --force --key-file="$DIR/munge.key" --socket="$DIR/munge.socket" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed" \
        || { cat "$DIR/munged.log" >&2 2>/dev/null; die "munged did not start"; }
    export SLURM_CONF="$DIR/slurm.conf"
    slurmctld -f "$SLURM_CONF" -i || { tail -n 20 "$DIR/slurmctld.log" >&2; die "slurmctld did not start"; }
    local i
    for i in $(seq "$NODES"); do
        slurmd -f "$SLURM_CONF" -N "$(node_name "$(hostname -s)" "$i")" || { tail -n 20 "$DIR"/slurmd-*.log >&2; die "slurmd did not start"; }
    done
    local state=""
    for _ in $(seq $((READY_S * 2))); do
        state=$(sinfo -h -p "$PARTITION" -o %T 2>/dev/null || true)
        if [ "$state" = idle ]; then
            echo "slurm-local: $NODES node(s) idle in partition $PARTITION ($(sinfo -h -p "$PARTITION" -o %N), $(nproc) CPUs each); config $SLURM_CONF" >&2
            cat "$DIR/env"
            return 0
        fi
        sleep 0.5
    done
    tail -n 20 "$DIR/slurmctld.log" "$DIR"/slurmd-*.log >&2 2>/dev/null || true
    stop
    die "the nodes are not idle after ${READY_S} s (sinfo: ${state:-no answer})"  # the last line: the reason
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    env) [ -f "$DIR/env" ] || die "no cluster in $DIR: scripts/slurm-local.sh start $DIR"; cat "$DIR/env" ;;
    *) die "usage: $0 start|stop|env [DIR]" ;;
esac
