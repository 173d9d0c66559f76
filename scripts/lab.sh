#!/usr/bin/env bash
# lab.sh: an N-host LAN built from Linux network namespaces, for edgelink e2e tests
# and demos. Run `scripts/lab.sh help` for the commands.
#
# Layout of lab NAME with N hosts (everything lives in namespaces this script creates;
# nothing is added to the root namespace, no route leads out of the lab):
#
#   netns el-NAME-sw   bridge br0 (the "switch"), ports port-h1 .. port-hN
#   netns el-NAME-hI   lo, lan0 (veth to port-hI) with LAB_NET.(10+I)/24,
#                      route 224.0.0.0/4 dev lan0 (mDNS needs it), no default route
#
# Interface names are fixed and short (br0, lan0, port-hI) because each lives in its
# own namespace: the 15-character limit never depends on the lab name.
# State (data dirs, pid files, logs) lives in LAB_DIR (default REPO/.lab/NAME); the
# lab dir is also recorded as the alias of br0, so commands find it from LAB alone.
# SC2016: backquotes in messages are literal on purpose. SC2015: `a && b || die` is intended.
# SC2030/SC2031: `list` sets LAB per lab in subshells on purpose.
# shellcheck disable=SC2016,SC2015,SC2030,SC2031
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/lab.sh"
IFACE=lan0
BRIDGE=br0
PORT=4100
HOST_OFFSET=10
MAX_HOSTS=200
DEFAULT_NET=10.213.0
DEFAULT_TTL=30m
NAME_RE='^[A-Za-z0-9_]{1,24}$'

die() { printf 'lab.sh: %s\n' "$*" >&2; exit 1; }
usage_die() { printf 'lab.sh: %s\nrun `scripts/lab.sh help` for usage\n' "$*" >&2; exit 2; }
note() { printf '%s\n' "$*" >&2; }

usage() {
  cat <<'EOF'
Usage: scripts/lab.sh COMMAND [ARGS]

An N-host LAN made of network namespaces (needs root and iproute2). Hosts are named
h1..hN; host hI has address LAB_NET.(10+I) on interface lan0, all hosts share one
bridge in a separate "switch" namespace. Agents run `bin/edgelink agent` (build first
with `npm run build`).

Commands:
  up N                 create a lab of N hosts (1..200) and a watchdog that runs
                       `down` after LAB_TTL; prints the lab name. Data dirs left in
                       LAB_DIR by an earlier run are reused (hosts keep their keys).
  down [--purge]       stop agents, kill processes in the lab's namespaces, delete
                       the namespaces (and with them the veths and the bridge), stop
                       the watchdog. Idempotent; safe after a half-failed `up`.
                       Keeps LAB_DIR (logs, data dirs) unless --purge.
  start HOST [VAR=VALUE]... [AGENT ARGS]...
                       start an agent in HOST's namespace: data dir LAB_DIR/HOST,
                       hostname HOST, listening on HOST's lab address port 4100
                       (unless AGENT ARGS has --listen), mDNS on, log (JSON lines)
                       in LAB_DIR/HOST.log, pid in LAB_DIR/HOST.pid. Leading
                       EDGELINK_*=VALUE words set agent environment variables
                       (inherited EDGELINK_* variables are not passed on).
  wait HOST [SECONDS]  wait until HOST's agent answers `edgelink status` (default 30 s);
                       fails at once, with the log's tail, if the agent died
  stop HOST            SIGTERM the agent and wait for it to exit (SIGKILL after
                       LAB_STOP_TIMEOUT seconds, default 15)
  kill HOST            SIGKILL the agent and wait for it to be gone
  exec HOST CMD...     run CMD inside HOST's network namespace
  cli HOST ARGS...     run `bin/edgelink ARGS --data-dir LAB_DIR/HOST` (over the
                       agent's unix socket; runs from the root namespace)
  log HOST [LINES]     print the last LINES (default 50) lines of HOST's agent log
  addr HOST NEWIP      replace HOST's lab address with NEWIP (in LAB_NET.0/24); a
                       running agent keeps its old listen address: restart it to
                       model a host that came back with a new DHCP lease
  netem HOST ARGS...   tc qdisc replace dev lan0 root netem ARGS in HOST's namespace
                       (traffic HOST sends), e.g. `netem h1 delay 20ms loss 5%`
  netem HOST clear     remove HOST's netem qdisc
  rate HOST RATE [in|out|both]
                       cap HOST's link at RATE (tc units: 200mbit, 1gbit, 500kbit)
                       with a token bucket (tbf): `out` caps what HOST sends (root
                       qdisc of its lan0), `in` what it receives (root qdisc of its
                       switch port port-HOST, the bridge's egress towards HOST), `both`
                       (default) caps each direction at RATE, like a full-duplex
                       link of that speed. Burst 10 ms of RATE (at least 64 KiB),
                       queue up to 50 ms. Works where netem is missing; shares
                       lan0's root qdisc with `netem` (the last one set wins).
                       `rate HOST clear` removes both caps
  loss HOST PERCENT [in|out|both]
                       drop PERCENT % (1..100) of the IP packets HOST receives
                       (in), sends (out) or both (default) on lan0, at random, with
                       nftables in HOST's namespace (works where netem is missing;
                       ARP is never dropped). `loss HOST clear` removes it
  partition HOST       cut HOST's cable: its switch port goes down (both directions;
                       HOST keeps its address and routes)
  heal HOST            plug HOST's cable back in
  pause HOST           SIGSTOP HOST's agent (a hung host: its kernel still ACKs TCP)
  resume HOST          SIGCONT HOST's agent
  bytes HOST           print `RX_BYTES TX_BYTES` of HOST's lan0 (kernel counters)
  list                 show labs, hosts, addresses, links and agents
  check                report whether a lab can be built here (root, ip, netns, veth,
                       bridge) and whether tc netem, tbf (for `rate`) and nft (for `loss`) are
                       available; exit 1 if no lab
  help                 this text

Environment:
  LAB       lab name ([A-Za-z0-9_], at most 24). `up` defaults to l<pid>; other
            commands default to the only lab that is up.
  LAB_DIR   lab state dir (default REPO/.lab/LAB; found from the lab when it is up)
  LAB_NET   first three octets of the lab's /24 (default 10.213.0; `up` only)
  LAB_TTL   watchdog delay for `up`: seconds, or with s/m/h suffix (default 30m)
  LAB_NODE  node binary (default: node on PATH)

Example:
  export LAB=demo; scripts/lab.sh up 3
  for h in h1 h2 h3; do scripts/lab.sh start $h; done
  scripts/lab.sh wait h1 && scripts/lab.sh cli h1 peers
  scripts/lab.sh down --purge
EOF
}

# ---------------------------------------------------------------- names and state

sw_ns() { printf 'el-%s-sw' "$LAB"; }
host_ns_name() { printf 'el-%s-%s' "$LAB" "$1"; }

ns_exists() { [[ -e /run/netns/$1 ]]; }

# Namespaces of lab $LAB (hosts first, switch last), whether or not the lab is complete.
lab_namespaces() {
  local all ns rest hosts=()
  all=$(ip netns list 2>/dev/null) || all=''
  while read -r ns rest; do
    if [[ $ns =~ ^el-${LAB}-h[0-9]+$ ]]; then hosts+=("$ns"); fi
  done <<<"$all"
  if (( ${#hosts[@]} > 0 )); then printf '%s\n' "${hosts[@]}" | sort -V; fi
  if ns_exists "$(sw_ns)"; then sw_ns; echo; fi
  return 0
}

# Names of the labs that are up (their switch namespace exists).
labs_up() {
  local all
  all=$(ip netns list 2>/dev/null) || all=''
  awk '{print $1}' <<<"$all" | sed -n 's/^el-\([A-Za-z0-9_]*\)-sw$/\1/p' | sort
}

check_name() {
  [[ $LAB =~ $NAME_RE ]] || usage_die "bad lab name '$LAB': use letters, digits and _ (at most 24)"
}

# Set LAB and LAB_DIR for a command that acts on an existing lab.
resolve_lab() {
  if [[ -z ${LAB:-} && -n ${LAB_DIR:-} && -f $LAB_DIR/lab.env ]]; then
    LAB=$(state_get "$LAB_DIR/lab.env" name)
  fi
  if [[ -z ${LAB:-} ]]; then
    local labs
    mapfile -t labs < <(labs_up)
    case ${#labs[@]} in
      0) die "no lab is up; create one with \`scripts/lab.sh up N\` (or set LAB=NAME)" ;;
      1) LAB=${labs[0]} ;;
      *) die "several labs are up (${labs[*]}); choose one with LAB=NAME" ;;
    esac
  fi
  check_name
  if [[ -z ${LAB_DIR:-} ]]; then
    local alias=''
    if ns_exists "$(sw_ns)"; then
      alias=$(ip -n "$(sw_ns)" -o link show dev "$BRIDGE" 2>/dev/null | sed -n 's/.* alias \(.*\)$/\1/p' | tail -n 1) || alias=''
    fi
    LAB_DIR=${alias:-$REPO/.lab/$LAB}
  fi
  LAB_NET=$DEFAULT_NET
  if [[ -f $LAB_DIR/lab.env ]]; then LAB_NET=$(state_get "$LAB_DIR/lab.env" net); fi
}

state_get() { sed -n "s/^$2=//p" "$1" | tail -n 1; }

require_up() {
  ns_exists "$(sw_ns)" || die "lab $LAB is not up (no namespace $(sw_ns)); create it with \`LAB=$LAB scripts/lab.sh up N\`"
}

# Check HOST and print its namespace.
host_ns() {
  local host=$1
  [[ $host =~ ^h[0-9]+$ ]] || usage_die "bad host '$host': hosts are named h1..hN"
  local ns
  ns=$(host_ns_name "$host")
  ns_exists "$ns" || die "lab $LAB has no host $host (no namespace $ns)"
  printf '%s\n' "$ns"
}

# Current IPv4 address of a host's lab interface.
host_addr() {
  ip -n "$1" -4 -o addr show dev "$IFACE" 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}'
}

node_bin() {
  local n=${LAB_NODE:-}
  [[ -n $n ]] || n=$(command -v node) || die "node is not on PATH (set LAB_NODE)"
  printf '%s\n' "$n"
}

# Is pid $1 alive (not a zombie) and in namespace $2?
pid_in_ns() {
  local pid=$1 ns=$2 state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/stat ]] || return 1
  state=$(sed 's/^.*) \(.\).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $state != Z && $state != X ]] || return 1
  [[ $(ip netns identify "$pid" 2>/dev/null) == "$ns" ]]
}

pid_alive() {
  local pid=$1 state
  [[ -r /proc/$pid/stat ]] || return 1
  state=$(sed 's/^.*) \(.\).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $state != Z && $state != X ]]
}

# Wait up to $2 seconds for pid $1 to be gone.
wait_gone() {
  local pid=$1 deadline=$(( $(date +%s%N) + $2 * 1000000000 ))
  while pid_alive "$pid"; do
    (( $(date +%s%N) < deadline )) || return 1
    sleep 0.05
  done
}

# Print the pid of HOST's agent if it is running.
agent_pid() {
  local host=$1 ns=$2 pid
  [[ -f $LAB_DIR/$host.pid ]] || return 1
  pid=$(<"$LAB_DIR/$host.pid")
  pid_in_ns "$pid" "$ns" || return 1
  printf '%s\n' "$pid"
}

lock_lab() {
  mkdir -p "$LAB_DIR"
  exec 9>>"$LAB_DIR/.lock"
  flock -w 60 9 || die "another lab.sh up/down holds $LAB_DIR/.lock"
}

ttl_seconds() {
  local t=$1
  [[ $t =~ ^([0-9]+)([smh]?)$ ]] || usage_die "bad LAB_TTL '$t': use seconds or a number with s, m or h"
  local n=${BASH_REMATCH[1]}
  case ${BASH_REMATCH[2]} in m) n=$(( n * 60 )) ;; h) n=$(( n * 3600 )) ;; esac
  (( n > 0 )) || usage_die "LAB_TTL must be positive"
  printf '%s\n' "$n"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  (( $# == 1 )) || usage_die "usage: lab.sh up N"
  local n=$1
  [[ $n =~ ^[0-9]{1,3}$ ]] && (( 10#$n >= 1 && 10#$n <= MAX_HOSTS )) || usage_die "N must be 1..$MAX_HOSTS"
  n=$(( 10#$n ))
  need_root
  LAB=${LAB:-l$$}
  check_name
  LAB_DIR=${LAB_DIR:-$REPO/.lab/$LAB}
  [[ $LAB_DIR == /* ]] || LAB_DIR=$PWD/$LAB_DIR
  LAB_NET=${LAB_NET:-$DEFAULT_NET}
  [[ $LAB_NET =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || usage_die "bad LAB_NET '$LAB_NET': give three octets such as 10.213.0"
  local ttl
  ttl=$(ttl_seconds "${LAB_TTL:-$DEFAULT_TTL}")
  local existing
  existing=$(lab_namespaces)
  [[ -z $existing ]] || die "lab $LAB is already up (or half up): run \`LAB=$LAB scripts/lab.sh down\` first"

  lock_lab
  rm -f "$LAB_DIR"/*.pid "$LAB_DIR/watchdog.pid"
  printf 'name=%s\nhosts=%s\nnet=%s\ncreated=%s\n' "$LAB" "$n" "$LAB_NET" "$(date -u +%FT%TZ)" >"$LAB_DIR/lab.env"
  : >"$LAB_DIR/.edgelink-lab"

  # From here on, any failure tears down what was built.
  UP_DONE=0
  # shellcheck disable=SC2154
  trap 'rc=$?; if (( UP_DONE == 0 )); then note "lab.sh: up failed; removing the half-built lab $LAB"; exec 9>&-; teardown || true; fi; exit $rc' EXIT

  local sw
  sw=$(sw_ns)
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add "$BRIDGE" type bridge stp_state 0 forward_delay 0 mcast_snooping 0
  ip -n "$sw" link set "$BRIDGE" alias "$LAB_DIR"
  ip -n "$sw" link set "$BRIDGE" up
  local i ns
  for (( i = 1; i <= n; i++ )); do
    ns=$(host_ns_name "h$i")
    ip netns add "$ns"
    # Both ends are created inside lab namespaces: nothing appears in the root namespace.
    ip -n "$sw" link add "port-h$i" type veth peer name "$IFACE" netns "$ns"
    ip -n "$sw" link set "port-h$i" master "$BRIDGE"
    ip -n "$sw" link set "port-h$i" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$LAB_NET.$(( HOST_OFFSET + i ))/24" dev "$IFACE"
    ip -n "$ns" link set "$IFACE" up
    # @libp2p/mdns fails silently without a route for multicast.
    ip -n "$ns" route add 224.0.0.0/4 dev "$IFACE"
  done

  # Watchdog: a crashed test run cannot leave the lab behind for longer than LAB_TTL.
  # Its own session, so Ctrl-C on the test run does not kill it; it does not hold the lock.
  rm -f "$LAB_DIR/watchdog.pid"
  export LAB LAB_DIR
  setsid bash -c 'echo $$ >"$1.tmp" && mv "$1.tmp" "$1"; sleep "$2"; echo "lab.sh watchdog: LAB_TTL expired at $(date -u +%FT%TZ); tearing down"; exec bash "$3" down' \
    "el-lab-watchdog-$LAB" "$LAB_DIR/watchdog.pid" "$ttl" "$SELF" </dev/null >>"$LAB_DIR/watchdog.log" 2>&1 9>&- &
  local deadline=$(( SECONDS + 10 ))
  until [[ -s $LAB_DIR/watchdog.pid ]]; do
    (( SECONDS < deadline )) || die "the watchdog did not start"
    sleep 0.02
  done
  # shellcheck disable=SC2034  # read by the EXIT trap
  UP_DONE=1
  trap - EXIT
  printf 'lab %s is up: %s hosts (h1..h%s, %s.%s-%s.%s), dir %s, torn down in %ss unless `down` comes first\n' \
    "$LAB" "$n" "$n" "$LAB_NET" $(( HOST_OFFSET + 1 )) "$LAB_NET" $(( HOST_OFFSET + n )) "$LAB_DIR" "$ttl" >&2
  printf 'export LAB=%s\n' "$LAB"
}

cmd_down() {
  local purge=0
  while (( $# > 0 )); do
    case $1 in --purge) purge=1 ;; *) usage_die "usage: lab.sh down [--purge]" ;; esac
    shift
  done
  need_root
  if [[ -z ${LAB:-} && -z ${LAB_DIR:-} && -z $(labs_up) ]]; then note "no lab is up; nothing to tear down"; return 0; fi
  resolve_lab
  if [[ -d $LAB_DIR ]]; then lock_lab; fi
  teardown
  exec 9>&-
  if (( purge )); then
    if [[ -f $LAB_DIR/.edgelink-lab && $LAB_DIR != / ]]; then
      rm -rf -- "$LAB_DIR"
      note "removed $LAB_DIR"
    elif [[ -e $LAB_DIR ]]; then
      note "lab.sh: not purging $LAB_DIR: it has no .edgelink-lab marker"
    fi
  elif [[ -d $LAB_DIR ]]; then
    note "logs and data dirs kept in $LAB_DIR"
  fi
  return 0
}

# Stop everything of lab $LAB. Tolerates any partial state.
teardown() {
  # 1. The watchdog (unless we are it: it execs `down`, keeping its pid).
  local wpid
  if [[ -f $LAB_DIR/watchdog.pid ]]; then
    wpid=$(<"$LAB_DIR/watchdog.pid")
    if [[ $wpid =~ ^[0-9]+$ && $wpid != "$$" ]] && pid_alive "$wpid" \
       && tr '\0' ' ' <"/proc/$wpid/cmdline" 2>/dev/null | grep -q -- "el-lab-watchdog-$LAB "; then
      kill -TERM -- "-$wpid" 2>/dev/null || kill -TERM "$wpid" 2>/dev/null || true
    fi
    rm -f "$LAB_DIR/watchdog.pid"
  fi

  # 2. Every process in the lab's namespaces (agents, `exec` leftovers): TERM, then KILL.
  local nss ns pids=() p
  mapfile -t nss < <(lab_namespaces)
  for ns in "${nss[@]}"; do
    while read -r p; do
      if [[ -n $p ]]; then pids+=("$p"); fi
    done < <(ip netns pids "$ns" 2>/dev/null || true)
  done
  if (( ${#pids[@]} > 0 )); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    # A paused (SIGSTOPped) process acts on SIGTERM only once it runs again.
    kill -CONT "${pids[@]}" 2>/dev/null || true
    local deadline=$(( $(date +%s%N) + ${LAB_STOP_TIMEOUT:-15} * 1000000000 )) alive
    while :; do
      alive=()
      for p in "${pids[@]}"; do
        if pid_alive "$p"; then alive+=("$p"); fi
      done
      (( ${#alive[@]} > 0 )) || break
      if (( $(date +%s%N) >= deadline )); then
        note "lab.sh: pids ${alive[*]} ignored SIGTERM; killing"
        kill -KILL "${alive[@]}" 2>/dev/null || true
        for p in "${alive[@]}"; do wait_gone "$p" 5 || note "lab.sh: pid $p does not die"; done
        break
      fi
      sleep 0.05
    done
  fi

  # 3. Namespaces: hosts first (their veths go with them), the switch last.
  for ns in "${nss[@]}"; do
    ip netns del "$ns" 2>/dev/null || ! ns_exists "$ns" || note "lab.sh: cannot delete namespace $ns"
  done
  rm -f "$LAB_DIR"/h*.pid 2>/dev/null || true
  local left
  left=$(lab_namespaces)
  [[ -z $left ]] || die "could not remove namespaces of lab $LAB: $(tr '\n' ' ' <<<"$left")"
  if (( ${#nss[@]} > 0 )); then note "lab $LAB is down"; else note "lab $LAB is not up; nothing to tear down"; fi
}

cmd_start() {
  (( $# >= 1 )) || usage_die "usage: lab.sh start HOST [VAR=VALUE]... [AGENT ARGS]..."
  local host=$1; shift
  need_root
  resolve_lab
  require_up
  local ns pid ip node
  ns=$(host_ns "$host")
  if pid=$(agent_pid "$host" "$ns"); then die "the agent on $host is already running (pid $pid)"; fi
  [[ -f $REPO/dist/cli/main.js ]] || die "the CLI is not built: run \`npm run build\` in $REPO"
  node=$(node_bin)
  ip=$(host_addr "$ns")
  [[ -n $ip ]] || die "$host has no lab address"

  local envs=() clean=() v
  while (( $# > 0 )) && [[ $1 =~ ^EDGELINK_[A-Z0-9_]+= ]]; do envs+=("$1"); shift; done
  while read -r v; do clean+=(-u "$v"); done < <(compgen -e | grep '^EDGELINK_' || true)
  local listen=(--listen "/ip4/$ip/tcp/$PORT") a
  for a in "$@"; do
    if [[ $a == --listen || $a == --listen=* ]]; then listen=(); fi
  done

  mkdir -p "$LAB_DIR"
  install -d -m 0700 "$LAB_DIR/$host"
  rm -f "$LAB_DIR/$host.pid"
  # `ip netns exec` and `env` exec in place, so $! is the agent's pid.
  ip netns exec "$ns" env "${clean[@]}" "${envs[@]}" \
    "$node" "$REPO/bin/edgelink" agent --data-dir "$LAB_DIR/$host" --hostname "$host" "${listen[@]}" "$@" \
    </dev/null >>"$LAB_DIR/$host.log" 2>&1 &
  pid=$!
  printf '%s\n' "$pid" >"$LAB_DIR/$host.pid"
  note "started agent on $host (pid $pid, $ip:$PORT), log $LAB_DIR/$host.log"
}

cmd_wait() {
  (( $# >= 1 && $# <= 2 )) || usage_die "usage: lab.sh wait HOST [SECONDS]"
  local host=$1 secs=${2:-30}
  [[ $secs =~ ^[0-9]+$ ]] || usage_die "SECONDS must be a whole number"
  resolve_lab
  require_up
  local ns node deadline
  ns=$(host_ns "$host")
  node=$(node_bin)
  deadline=$(( SECONDS + secs ))
  while :; do
    if "$node" "$REPO/bin/edgelink" status --json --data-dir "$LAB_DIR/$host" >/dev/null 2>&1; then return 0; fi
    if ! agent_pid "$host" "$ns" >/dev/null; then
      note "lab.sh: the agent on $host is not running; end of $LAB_DIR/$host.log:"
      tail -n 20 "$LAB_DIR/$host.log" >&2 2>/dev/null || true
      exit 1
    fi
    (( SECONDS < deadline )) || die "the agent on $host did not answer within ${secs}s; see $LAB_DIR/$host.log"
    sleep 0.1
  done
}

cmd_stop() {
  local signal=${STOP_SIGNAL:-TERM}
  (( $# == 1 )) || usage_die "usage: lab.sh $([[ $signal == TERM ]] && echo stop || echo kill) HOST"
  local host=$1
  need_root
  resolve_lab
  require_up
  local ns pid
  ns=$(host_ns "$host")
  if ! pid=$(agent_pid "$host" "$ns"); then
    rm -f "$LAB_DIR/$host.pid"
    note "the agent on $host is not running"
    return 0
  fi
  kill "-$signal" "$pid" 2>/dev/null || true
  if [[ $signal == TERM ]]; then
    # A paused agent acts on SIGTERM only once it runs again.
    kill -CONT "$pid" 2>/dev/null || true
    local t=${LAB_STOP_TIMEOUT:-15}
    if ! wait_gone "$pid" "$t"; then
      note "lab.sh: the agent on $host (pid $pid) did not stop within ${t}s of SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 5 || die "pid $pid does not die"
      rm -f "$LAB_DIR/$host.pid"
      exit 1
    fi
  else
    wait_gone "$pid" 5 || die "pid $pid does not die"
  fi
  rm -f "$LAB_DIR/$host.pid"
  note "stopped the agent on $host (SIG$signal)"
}

cmd_exec() {
  (( $# >= 2 )) || usage_die "usage: lab.sh exec HOST CMD..."
  local host=$1; shift
  need_root
  resolve_lab
  local ns
  ns=$(host_ns "$host")
  exec ip netns exec "$ns" "$@"
}

cmd_cli() {
  (( $# >= 1 )) || usage_die "usage: lab.sh cli HOST ARGS..."
  local host=$1; shift
  resolve_lab
  [[ $host =~ ^h[0-9]+$ ]] || usage_die "bad host '$host': hosts are named h1..hN"
  local node
  node=$(node_bin)
  exec "$node" "$REPO/bin/edgelink" "$@" --data-dir "$LAB_DIR/$host"
}

cmd_log() {
  (( $# >= 1 && $# <= 2 )) || usage_die "usage: lab.sh log HOST [LINES]"
  resolve_lab
  [[ $1 =~ ^h[0-9]+$ ]] || usage_die "bad host '$1'"
  [[ -f $LAB_DIR/$1.log ]] || die "no log for $1 in $LAB_DIR"
  tail -n "${2:-50}" "$LAB_DIR/$1.log"
}

cmd_addr() {
  (( $# == 2 )) || usage_die "usage: lab.sh addr HOST NEWIP"
  local host=$1 new=$2
  need_root
  resolve_lab
  require_up
  local ns old other ons
  ns=$(host_ns "$host")
  local re="^${LAB_NET//./\\.}\\.([0-9]{1,3})$"
  [[ $new =~ $re ]] && (( 10#${BASH_REMATCH[1]} >= 1 && 10#${BASH_REMATCH[1]} <= 254 )) \
    || usage_die "NEWIP must be in the lab subnet $LAB_NET.0/24 (.1 to .254)"
  old=$(host_addr "$ns")
  [[ $old != "$new" ]] || { note "$host already has $new"; return 0; }
  while read -r ons; do
    [[ -n $ons && $ons != "$ns" && $ons != "$(sw_ns)" ]] || continue
    other=$(host_addr "$ons")
    [[ $other != "$new" ]] || die "$new is in use by ${ons#el-"$LAB"-}"
  done < <(lab_namespaces)
  ip -n "$ns" -4 addr flush dev "$IFACE"
  ip -n "$ns" addr add "$new/24" dev "$IFACE"
  ip -n "$ns" route replace 224.0.0.0/4 dev "$IFACE"
  note "$host: $old -> $new"
  if agent_pid "$host" "$ns" >/dev/null; then
    note "note: the agent on $host still listens on $old; restart it (stop/start) to listen on $new"
  fi
}

cmd_netem() {
  (( $# >= 2 )) || usage_die "usage: lab.sh netem HOST ARGS... | netem HOST clear"
  local host=$1; shift
  need_root
  resolve_lab
  require_up
  local ns out
  ns=$(host_ns "$host")
  if [[ $1 == clear && $# == 1 ]]; then
    if ip netns exec "$ns" tc qdisc show dev "$IFACE" root | grep -q '^qdisc netem'; then
      ip netns exec "$ns" tc qdisc del dev "$IFACE" root
    fi
    return 0
  fi
  if ! out=$(ip netns exec "$ns" tc qdisc replace dev "$IFACE" root netem "$@" 2>&1); then
    if grep -qi 'unknown' <<<"$out"; then
      die "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM / module sch_netem): $out"
    fi
    die "tc netem $* failed on $host: $out"
  fi
}

cmd_partition() {
  (( $# == 1 )) || usage_die "usage: lab.sh partition HOST"
  need_root
  resolve_lab
  require_up
  host_ns "$1" >/dev/null
  ip -n "$(sw_ns)" link set "port-$1" down
}

cmd_heal() {
  (( $# == 1 )) || usage_die "usage: lab.sh heal HOST"
  need_root
  resolve_lab
  require_up
  host_ns "$1" >/dev/null
  ip -n "$(sw_ns)" link set "port-$1" up
}

# tc rate (e.g. 200mbit, 1.5gbit, 500kbit, 10mbps) -> bits per second; fails on anything else.
rate_bps() {
  local r=${1,,} n u
  [[ $r =~ ^([0-9]+(\.[0-9]+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$ ]] || return 1
  n=${BASH_REMATCH[1]} u=${BASH_REMATCH[3]}
  local mult
  case $u in
    bit) mult=1 ;; kbit) mult=1000 ;; mbit) mult=1000000 ;; gbit) mult=1000000000 ;;
    bps) mult=8 ;; kbps) mult=8000 ;; mbps) mult=8000000 ;; gbps) mult=8000000000 ;;
  esac
  awk -v n="$n" -v m="$mult" 'BEGIN { v = n * m; if (v < 8000) exit 1; printf "%.0f\n", v }'
}

cmd_rate() {
  (( $# >= 2 && $# <= 3 )) || usage_die "usage: lab.sh rate HOST RATE [in|out|both] | rate HOST clear"
  local host=$1 rate=$2 dir=${3:-both}
  need_root
  resolve_lab
  require_up
  local ns sw
  ns=$(host_ns "$host")
  sw=$(sw_ns)
  if [[ $rate == clear ]]; then
    (( $# == 2 )) || usage_die "usage: lab.sh rate HOST clear"
    if ip netns exec "$ns" tc qdisc show dev "$IFACE" root | grep -q '^qdisc tbf'; then
      ip netns exec "$ns" tc qdisc del dev "$IFACE" root
    fi
    if ip netns exec "$sw" tc qdisc show dev "port-$host" root | grep -q '^qdisc tbf'; then
      ip netns exec "$sw" tc qdisc del dev "port-$host" root
    fi
    note "$host: no rate cap"
    return 0
  fi
  [[ $dir =~ ^(in|out|both)$ ]] || usage_die "direction must be in, out or both"
  local bps burst out
  bps=$(rate_bps "$rate") || usage_die "RATE must be a tc rate of at least 8kbit, e.g. 200mbit, 1gbit or 500kbit (got '$rate')"
  # 10 ms worth of bytes, at least 64 KiB (a GSO segment on a veth is up to 64 KiB).
  burst=$(( bps / 8 / 100 ))
  (( burst >= 65536 )) || burst=65536
  local spec=(tbf rate "$bps"bit burst "$burst" latency 50ms)
  if [[ $dir == out || $dir == both ]]; then
    out=$(ip netns exec "$ns" tc qdisc replace dev "$IFACE" root "${spec[@]}" 2>&1) \
      || die "tc tbf on $host's $IFACE failed: $out"
  fi
  if [[ $dir == in || $dir == both ]]; then
    out=$(ip netns exec "$sw" tc qdisc replace dev "port-$host" root "${spec[@]}" 2>&1) \
      || die "tc tbf on the switch port of $host failed: $out"
  fi
  note "$host: $dir capped at $rate ($bps bit/s, burst $burst B)"
}

# nft table that `loss` manages inside a host's namespace.
LOSS_TABLE=edgelink_lab_loss

cmd_loss() {
  (( $# >= 2 && $# <= 3 )) || usage_die "usage: lab.sh loss HOST PERCENT [in|out|both] | loss HOST clear"
  local host=$1 pct=$2 dir=${3:-both}
  need_root
  resolve_lab
  require_up
  local ns
  ns=$(host_ns "$host")
  command -v nft >/dev/null || die "loss needs nftables (nft): apt-get install nftables"
  if [[ $pct == clear ]]; then
    (( $# == 2 )) || usage_die "usage: lab.sh loss HOST clear"
    ip netns exec "$ns" nft delete table inet "$LOSS_TABLE" 2>/dev/null || true
    note "$host: no loss"
    return 0
  fi
  pct=${pct%\%}
  [[ $pct =~ ^[0-9]{1,3}$ ]] && (( 10#$pct >= 1 && 10#$pct <= 100 )) || usage_die "PERCENT must be a whole number 1..100"
  pct=$(( 10#$pct ))
  [[ $dir =~ ^(in|out|both)$ ]] || usage_die "direction must be in, out or both"
  local drop="numgen random mod 100 < $pct counter drop" rules=()
  if [[ $dir == in || $dir == both ]]; then
    rules+=("chain input { type filter hook input priority -10; policy accept; iifname \"$IFACE\" $drop; }")
  fi
  if [[ $dir == out || $dir == both ]]; then
    rules+=("chain output { type filter hook output priority -10; policy accept; oifname \"$IFACE\" $drop; }")
  fi
  # One nft transaction: declare the table (so the delete cannot fail), delete it, add the new one.
  local out
  if ! out=$(printf 'table inet %s\ndelete table inet %s\ntable inet %s {\n%s\n}\n' "$LOSS_TABLE" "$LOSS_TABLE" "$LOSS_TABLE" \
               "$(printf '  %s\n' "${rules[@]}")" | ip netns exec "$ns" nft -f - 2>&1); then
    die "nft failed on $host: $out"
  fi
  note "$host: dropping $pct% of IP packets ($dir) on $IFACE"
}

# pause / resume: SIGSTOP / SIGCONT the agent.
cmd_signal() {
  local signal=$1; shift
  (( $# == 1 )) || usage_die "usage: lab.sh $([[ $signal == STOP ]] && echo pause || echo resume) HOST"
  local host=$1
  need_root
  resolve_lab
  require_up
  local ns pid
  ns=$(host_ns "$host")
  pid=$(agent_pid "$host" "$ns") || die "the agent on $host is not running"
  kill "-$signal" "$pid" || die "cannot send SIG$signal to pid $pid"
  note "$host: SIG$signal sent to the agent (pid $pid)"
}

cmd_bytes() {
  (( $# == 1 )) || usage_die "usage: lab.sh bytes HOST"
  need_root
  resolve_lab
  require_up
  local ns rx tx
  ns=$(host_ns "$1")
  rx=$(ip netns exec "$ns" cat "/sys/class/net/$IFACE/statistics/rx_bytes")
  tx=$(ip netns exec "$ns" cat "/sys/class/net/$IFACE/statistics/tx_bytes")
  printf '%s %s\n' "$rx" "$tx"
}

cmd_list() {
  (( $# == 0 )) || usage_die "usage: lab.sh list"
  if [[ -n ${LAB:-} || -n ${LAB_DIR:-} ]]; then list_one; return 0; fi
  local labs name
  mapfile -t labs < <(labs_up)
  if (( ${#labs[@]} == 0 )); then note "no lab is up"; return 0; fi
  for name in "${labs[@]}"; do
    ( LAB=$name; LAB_DIR=''; list_one )
  done
}

list_one() {
  resolve_lab
  local wd='none' wpid
  if [[ -f $LAB_DIR/watchdog.pid ]]; then
    wpid=$(<"$LAB_DIR/watchdog.pid")
    pid_alive "$wpid" && wd="pid $wpid" || wd="dead (pid $wpid)"
  fi
  if ! ns_exists "$(sw_ns)"; then
    printf 'lab %s: not up (dir %s)\n' "$LAB" "$LAB_DIR"
    return 0
  fi
  printf 'lab %s  dir %s  watchdog %s\n' "$LAB" "$LAB_DIR" "$wd"
  printf '  %-6s %-28s %-15s %-5s %s\n' HOST NAMESPACE ADDRESS LINK AGENT
  local ns host addr link agent pid q
  while read -r ns; do
    [[ -n $ns && $ns != "$(sw_ns)" ]] || continue
    host=${ns#el-"$LAB"-}
    addr=$(host_addr "$ns")
    link=up
    ip -n "$(sw_ns)" -o link show dev "port-$host" 2>/dev/null | grep -q 'state UP' || link='cut'
    q=$(ip netns exec "$ns" tc qdisc show dev "$IFACE" root 2>/dev/null | sed -n 's/^qdisc netem [^ ]* root refcnt [0-9]* \(.*\)$/\1/p')
    [[ -z $q ]] || link="$link (netem $q)"
    q=$(ip netns exec "$ns" tc qdisc show dev "$IFACE" root 2>/dev/null | sed -n 's/^qdisc tbf .* rate \([^ ]*\) .*$/\1/p')
    [[ -z $q ]] || link="$link (rate out $q)"
    q=$(ip netns exec "$(sw_ns)" tc qdisc show dev "port-$host" root 2>/dev/null | sed -n 's/^qdisc tbf .* rate \([^ ]*\) .*$/\1/p')
    [[ -z $q ]] || link="$link (rate in $q)"
    q=$(ip netns exec "$ns" nft list table inet "$LOSS_TABLE" 2>/dev/null \
        | awk '/hook/ { d = ($0 ~ /hook input/) ? "in" : "out" } /mod 100 </ { for (i = 1; i < NF; i++) if ($i == "<") printf "%s %s%% ", d, $(i + 1) }') || q=''
    [[ -z $q ]] || link="$link (loss ${q% })"
    if pid=$(agent_pid "$host" "$ns"); then agent="running (pid $pid)"; else agent="-"; fi
    printf '  %-6s %-28s %-15s %-5s %s\n' "$host" "$ns" "${addr:--}" "$link" "$agent"
  done < <(lab_namespaces)
}

cmd_check() {
  local ok=1 probe="elprobe-$$"
  if [[ $(id -u) != 0 ]]; then echo "root=missing: lab.sh needs root (network namespaces), running as uid $(id -u)"; ok=0; else echo "root=ok"; fi
  if command -v ip >/dev/null; then echo "ip=ok: $(ip -V 2>&1)"; else echo "ip=missing: install iproute2"; ok=0; fi
  command -v tc >/dev/null || { echo "tc=missing: install iproute2"; ok=0; }
  command -v flock >/dev/null && command -v setsid >/dev/null || { echo "util-linux=missing: flock/setsid not found"; ok=0; }
  if (( ok )); then
    local err
    if ! err=$(ip netns add "$probe" 2>&1); then
      echo "netns=missing: ip netns add failed: $err"; ok=0
    else
      echo "netns=ok"
      if err=$(ip -n "$probe" link add br0 type bridge 2>&1 && ip -n "$probe" link add v0 type veth peer name v1 2>&1 \
               && ip -n "$probe" link set v0 master br0 2>&1); then
        echo "veth+bridge=ok"
      else
        echo "veth+bridge=missing: $err"; ok=0
      fi
      ip -n "$probe" link set lo up 2>/dev/null || true
      if err=$(ip netns exec "$probe" tc qdisc add dev lo root netem delay 1ms 2>&1); then
        echo "netem=ok"
      else
        echo "netem=missing: tc netem is unavailable in this kernel ($err)"
      fi
      if err=$(ip netns exec "$probe" tc qdisc replace dev lo root tbf rate 200mbit burst 256kb latency 50ms 2>&1); then
        echo "tbf=ok"
      else
        echo "tbf=missing: tc tbf is unavailable in this kernel (lab.sh rate needs it: $err)"
      fi
      if ! command -v nft >/dev/null; then
        echo "nft=missing: install nftables (lab.sh loss needs it)"
      elif err=$(printf '%s\n' 'table inet elprobe { chain input { type filter hook input priority 0; policy accept; numgen random mod 100 < 1 counter drop; }; }' \
                 | ip netns exec "$probe" nft -f - 2>&1); then
        echo "nft=ok"
      else
        echo "nft=missing: nftables random drop is unavailable ($err)"
      fi
      ip netns del "$probe" 2>/dev/null || true
    fi
  fi
  (( ok ))
}

need_root() {
  [[ $(id -u) == 0 ]] || die "needs root (network namespaces); run it with sudo"
  command -v ip >/dev/null || die "needs iproute2 (ip); apt-get install iproute2"
}

main() {
  local cmd=${1:-help}
  (( $# == 0 )) || shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    start) cmd_start "$@" ;;
    wait) cmd_wait "$@" ;;
    stop) STOP_SIGNAL=TERM cmd_stop "$@" ;;
    kill) STOP_SIGNAL=KILL cmd_stop "$@" ;;
    exec) cmd_exec "$@" ;;
    cli) cmd_cli "$@" ;;
    log) cmd_log "$@" ;;
    addr) cmd_addr "$@" ;;
    netem) cmd_netem "$@" ;;
    rate) cmd_rate "$@" ;;
    partition) cmd_partition "$@" ;;
    heal) cmd_heal "$@" ;;
    loss) cmd_loss "$@" ;;
    pause) cmd_signal STOP "$@" ;;
    resume) cmd_signal CONT "$@" ;;
    bytes) cmd_bytes "$@" ;;
    list|ls) cmd_list "$@" ;;
    check) cmd_check "$@" ;;
    help|-h|--help) usage ;;
    *) usage_die "unknown command '$cmd'" ;;
  esac
}

main "$@"
