#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian's packages, for the integration test.
#
#   scripts/slurm_cluster.sh install   # apt-get: slurm-wlm, munge, slurmdbd, mariadb-server-core, mariadb-client-core
#   scripts/slurm_cluster.sh start     # install if needed, then munged, mariadbd, slurmdbd, slurmctld, slurmd
#   scripts/slurm_cluster.sh status    # sinfo
#   scripts/slurm_cluster.sh stop      # stop the daemons (by their pid files) and remove the pid files
#
# Needs root. There is no systemd here (and policy-rc.d blocks service starts), so every daemon is
# started directly. Accounting (slurmdbd on MariaDB over a local socket) is what lets a job that died
# without writing its result be seen as FAILED / CANCELLED (sacct) instead of UNKNOWN for ever.
# Everything listens on 127.0.0.1. State lives under $KB_SLURM_DIR (default /var/lib/kernel-bench-slurm).
set -euo pipefail

STATE=${KB_SLURM_DIR:-/var/lib/kernel-bench-slurm}
CLUSTER=${KB_SLURM_CLUSTER:-kbench}
RUN=/run/kernel-bench-slurm
SOCKET=/run/mysqld/mysqld.sock
PACKAGES=(slurm-wlm slurm-client munge slurmdbd mariadb-server-core mariadb-client-core)

log() { echo "slurm_cluster: $*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 4))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  log "timed out waiting for $what"; return 1
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
      && command -v munged >/dev/null && command -v my_print_defaults >/dev/null; then
    return 0
  fi
  log "installing ${PACKAGES[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

start_munge() {
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 munged sh -c 'munge -n | unmunge'
  fi
}

start_mariadb() {
  mkdir -p "$STATE/mysql" /run/mysqld "$RUN"
  if [[ ! -d "$STATE/mysql/mysql" ]]; then
    mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
      --skip-test-db >"$STATE/mariadb-install.log" 2>&1
  fi
  if [[ ! -S $SOCKET ]] || ! pid_alive "$RUN/mariadbd.pid"; then
    rm -f "$SOCKET" "$RUN/mariadbd.pid"
    # Local socket only: no TCP port.
    nohup mariadbd --user=root --datadir="$STATE/mysql" --socket="$SOCKET" --skip-networking \
      --pid-file="$RUN/mariadbd.pid" --log-error="$STATE/mariadbd.log" >/dev/null 2>&1 &
    wait_for 30 mariadbd test -S "$SOCKET"
  fi
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_configs() {
  mkdir -p /etc/slurm "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/log"
  cat >/etc/slurm/slurmdbd.conf <<EOF
# Written by kernel-bench scripts/slurm_cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
EOF
  chmod 0600 /etc/slurm/slurmdbd.conf
  local node
  node=$(slurmd -C | head -n 1)
  cat >/etc/slurm/slurm.conf <<EOF
# Written by kernel-bench scripts/slurm_cluster.sh: one node, loopback only, accounting through slurmdbd.
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=60
SchedulerType=sched/backfill
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  install
  [[ $(id -u) == 0 ]] || { log "needs root"; exit 1; }
  mkdir -p "$STATE" "$RUN"
  start_munge
  start_mariadb
  write_configs
  if ! pid_alive "$RUN/slurmdbd.pid"; then
    rm -f "$RUN/slurmdbd.pid"
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
  fi
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  if ! pid_alive "$RUN/slurmctld.pid"; then
    rm -f "$RUN/slurmctld.pid"
    slurmctld
    wait_for 30 slurmctld scontrol ping
  fi
  if ! pid_alive "$RUN/slurmd.pid"; then
    rm -f "$RUN/slurmd.pid"
    slurmd
  fi
  wait_for 30 "an idle node" sh -c 'sinfo -h -o %T | grep -Eq "^(idle|mixed|allocated)"' || {
    scontrol update nodename="$(hostname -s)" state=resume || true
    wait_for 15 "an idle node" sh -c 'sinfo -h -o %T | grep -Eq "^(idle|mixed|allocated)"'
  }
  log "cluster '$CLUSTER' is up: $(sinfo -h -o '%P %D %T %c CPUs')"
}

stop_pid() {  # stop_pid NAME PIDFILE
  local pidfile=$2 pid
  if [[ -s $pidfile ]]; then
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

stop() {
  command -v scancel >/dev/null && scancel --full --quiet --user root 2>/dev/null || true
  stop_pid slurmd "$RUN/slurmd.pid"
  stop_pid slurmctld "$RUN/slurmctld.pid"
  stop_pid slurmdbd "$RUN/slurmdbd.pid"
  stop_pid mariadbd "$RUN/mariadbd.pid"
  rm -f "$SOCKET"
  stop_pid munged /run/munge/munged.pid
  rm -f /run/munge/munge.socket.2*
  log "stopped"
}

status() {
  sinfo && squeue
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
