#!/usr/bin/env bash
# A single-node SLURM test cluster on localhost: munged + slurmctld + slurmd.
#
#   tests/slurm/cluster.sh start    install (apt, as root) if missing, configure, start, wait until idle
#   tests/slurm/cluster.sh stop     stop exactly the daemons this script started
#   tests/slurm/cluster.sh status   say whether it runs
#   tests/slurm/cluster.sh env      print the `export SLURM_CONF=... PATH=...` clients need (sbatch, squeue, snakemake)
#
# Everything it writes lives in $EROSEG_SLURM_DIR (default /tmp/eroseg-slurm); it never
# writes over a system configuration. On failure it prints one line and exits non-zero.
set -u

DIR="${EROSEG_SLURM_DIR:-/tmp/eroseg-slurm}"
CONF="$DIR/etc/slurm.conf"
GPUS="${EROSEG_SLURM_GPUS:-2}"

fail() { echo "slurm test cluster: $*" >&2; exit 1; }

running() { [ -f "$DIR/run/$1.pid" ] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null; }

install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || fail "slurm-wlm and munge are not installed and this is not root (cannot apt-get install)"
    command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and apt-get is not available"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$DIR/apt.log" 2>&1 \
        || { apt-get update -q >>"$DIR/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >>"$DIR/apt.log" 2>&1; } \
        || fail "apt-get install slurm-wlm munge failed (see $DIR/apt.log)"
}

write_config() {
    mkdir -p "$DIR"/{etc,run,log,spool/ctld,spool/d,munge}
    chmod 700 "$DIR/munge"
    local cpus mem
    # Not plain nproc: it honours OMP_NUM_THREADS, which test runs set to 1 (the node then ran one job at a time).
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    # GPUs without devices: plain files stand in for /dev/nvidiaN, so SLURM schedules and
    # accounts GPU requests all the same (task/none: nothing is constrained to them).
    local gres_line="" node_gres=""
    if [ "$GPUS" -gt 0 ]; then
        gres_line="GresTypes=gpu"
        node_gres="Gres=gpu:$GPUS"
        mkdir -p "$DIR/dev"
        : >"$DIR/etc/gres.conf"
        for i in $(seq 0 $((GPUS - 1))); do
            : >"$DIR/dev/gpu$i"
            echo "NodeName=localhost Name=gpu File=$DIR/dev/gpu$i" >>"$DIR/etc/gres.conf"
        done
    fi
    cat >"$CONF" <<CONF
ClusterName=erosegtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
SlurmctldPort=${EROSEG_SLURM_PORT:-6917}
SlurmdPort=$(( ${EROSEG_SLURM_PORT:-6917} + 1 ))
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=600
$gres_line
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN $node_gres
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    # srun shim: the Snakemake jobstep plugin (>= 0.6) removes every SLURM_* variable, SLURM_CONF
    # included, from the environment of the srun it runs inside a job. A real cluster keeps its
    # config at the default path (or runs configless), so it does not notice; this cluster's config
    # lives in $DIR, so a job's srun gets it back from EROSEG_SLURM_CONF. Put $DIR/bin first on PATH.
    mkdir -p "$DIR/bin"
    cat >"$DIR/bin/srun" <<SHIM
#!/bin/sh
SLURM_CONF="\${SLURM_CONF:-\${EROSEG_SLURM_CONF:-$CONF}}" exec $(command -v srun) "\$@"
SHIM
    chmod +x "$DIR/bin/srun"
    [ -f "$DIR/munge/munge.key" ] || dd if=/dev/urandom bs=1 count=1024 of="$DIR/munge/munge.key" 2>/dev/null
    chmod 400 "$DIR/munge/munge.key"
}

start() {
    mkdir -p "$DIR"
    if running slurmctld && running slurmd && running munged; then
        echo "slurm test cluster already running (SLURM_CONF=$CONF)"
        return 0
    fi
    install_if_missing
    write_config
    if ! running munged; then
        munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket.2" \
            --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed" \
            >>"$DIR/log/start.log" 2>&1 || fail "munged failed to start (see $DIR/log/munged.log)"
    fi
    export SLURM_CONF="$CONF"
    running slurmctld || slurmctld -f "$CONF" >>"$DIR/log/start.log" 2>&1 \
        || fail "slurmctld failed to start (see $DIR/log/slurmctld.log)"
    running slurmd || slurmd -f "$CONF" >>"$DIR/log/start.log" 2>&1 \
        || fail "slurmd failed to start (see $DIR/log/slurmd.log)"
    for _ in $(seq 1 60); do
        state=$(sinfo -h -N -o '%t' 2>/dev/null | head -1)
        case "$state" in
            idle|mix|alloc) echo "slurm test cluster up: node $state, SLURM_CONF=$CONF"; return 0 ;;
            down*|drain*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 ;;
        esac
        sleep 1
    done
    fail "node did not become idle within 60 s (state: ${state:-unknown}; see $DIR/log/)"
}

stop() {
    local any=0
    for d in slurmd slurmctld munged; do
        if running "$d"; then
            kill "$(cat "$DIR/run/$d.pid")" 2>/dev/null && any=1
        fi
    done
    for _ in $(seq 1 20); do
        running slurmd || running slurmctld || running munged || break
        sleep 0.5
    done
    [ $any = 1 ] && echo "slurm test cluster stopped" || echo "slurm test cluster was not running"
}

status() {
    if running slurmctld && running slurmd && running munged; then
        echo "running (SLURM_CONF=$CONF)"
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF EROSEG_SLURM_CONF=$CONF PATH=$DIR/bin:\$PATH" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
