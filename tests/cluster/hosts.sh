#!/usr/bin/env bash
# Three "hosts" on this machine for `ray up`: each a network namespace with its own address on a private bridge,
# its own PID namespace (so `ray stop` on one host sees only that host's processes, and killing the host's first
# process kills all of them, as a machine that dies), its own /root, /tmp and /dev/shm (Ray's session folders and
# object store do not collide), and an SSH server that answers only on its bridge address. Everything else of
# the file system is shared, as on machines that mount the same software.
#
#   tests/cluster/hosts.sh up WORK       start them; WORK holds keys, homes and state (created)
#   tests/cluster/hosts.sh kill WORK N   kill host N (1 = head) at once, every process in it
#   tests/cluster/hosts.sh down WORK     kill every host, remove the namespaces, the bridge and WORK's state
#
# HOST_SHARED_PATHS (space-separated) names folders under /root to keep visible in the hosts at the same path, as
# software every machine has installed (a pyenv Python, for instance).
#
# Needs root, iproute2, util-linux's unshare and openssh-server. Nothing listens outside the bridge and the
# hosts' loopbacks; the hosts have no route anywhere else (no default route, and this machine does not forward).
set -euo pipefail

SUBNET=10.77.0
BRIDGE=dist-br0
HOSTS=(1 2 3)

up() {
  local work=$1
  down "$work"  # what an interrupted earlier run may have left (the names are fixed)
  [ -f "$work/key" ] || ssh-keygen -q -t ed25519 -N "" -f "$work/key"
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.254/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  mkdir -p /run/sshd
  for n in "${HOSTS[@]}"; do
    local host=$work/host$n
    mkdir -p "$host/root/.ssh" "$host/tmp" "$host/etc"
    cp "$work/key.pub" "$host/root/.ssh/authorized_keys"
    [ -f "$host/etc/host_key" ] || ssh-keygen -q -t ed25519 -N "" -f "$host/etc/host_key"
    cat > "$host/etc/sshd_config" <<EOF
ListenAddress $SUBNET.$n
HostKey $host/etc/host_key
PidFile none
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AcceptEnv LANG
EOF
    ip netns add "dist-host$n"
    ip link add "dist-veth$n" type veth peer name eth0 netns "dist-host$n"
    ip link set "dist-veth$n" master "$BRIDGE" up
    ip -n "dist-host$n" addr add "$SUBNET.$n/24" dev eth0
    ip -n "dist-host$n" link set eth0 up
    ip -n "dist-host$n" link set lo up
    # The host's first process is sshd (PID 1 of its PID namespace): killing it takes the whole host down.
    # Paths under /root that every machine would have installed (this machine's Python) stay visible.
    local carry=""
    for path in ${HOST_SHARED_PATHS:-}; do
      mkdir -p "$host$path"
      carry+="mount --bind '$path' '$host$path' && "
    done
    ip netns exec "dist-host$n" unshare --pid --fork --mount-proc --mount --propagation private \
      sh -c "$carry mount --rbind '$host/root' /root && mount --bind '$host/tmp' /tmp &&
             mount -t tmpfs -o size=4g tmpfs /dev/shm && exec /usr/sbin/sshd -D -f '$host/etc/sshd_config'" \
      > "$work/host$n.log" 2>&1 &
    echo $! > "$work/host$n.pid"
  done
  for n in "${HOSTS[@]}"; do
    for _ in $(seq 50); do
      ssh -q -i "$work/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        -o ConnectTimeout=2 "root@$SUBNET.$n" true && continue 2
      sleep 0.2
    done
    echo "host $n did not answer on $SUBNET.$n:22" >&2
    exit 1
  done
}

kill_host() {
  local work=$1 n=$2
  # The unshare process's child is the host's PID 1; killing PID 1 kills everything in its namespace.
  if [ -f "$work/host$n.pid" ]; then
    local first
    first=$(pgrep -P "$(cat "$work/host$n.pid")" | head -1 || true)
    [ -n "$first" ] && kill -9 "$first" 2>/dev/null || true
  fi
  ip netns pids "dist-host$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
}

down() {
  local work=$1
  for n in "${HOSTS[@]}"; do
    kill_host "$work" "$n"
    ip netns del "dist-host$n" 2>/dev/null || true
    ip link del "dist-veth$n" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

case "${1:-}" in
  up) up "$2" ;;
  kill) kill_host "$2" "$3" ;;
  down) down "$2" ;;
  *) echo "usage: $0 up|kill|down WORK [N]" >&2; exit 2 ;;
esac
