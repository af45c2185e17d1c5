#!/bin/bash
# Network benchmark (root; needs iperf3: apt-get install -y iperf3).
#
# 1. Cost of a container's network setup, for N containers (default 100): `up -d` of N
#    `sleep` services three ways: network_mode host (no namespace), none (a namespace with only
#    lo) and the default bridge (namespace + veth + leased address + route + DNS name). The
#    differences divided by N are the namespace's cost and the bridge attachment's cost per
#    container. Side by side, when podman and its localhost/bb image are present (see
#    ../shared/peer-bench/00-build-image.sh): `podman run --rm bb true`, bridge vs none.
# 2. TCP throughput with iperf3 (T seconds each): container to container over the project's
#    bridge, host to container through a published port (the supervisor's proxy), and the
#    host's loopback as the reference.
#
# Usage: cargo build --release && bench/net.sh           # N=100, RUNS=3, T=5
#        N=50 RUNS=1 T=3 PODMAN=0 bench/net.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BERTH=${BERTH:-$PWD/target/release/berth}
N=${N:-100}; RUNS=${RUNS:-3}; T=${T:-5}; PODMAN=${PODMAN:-1}
command -v iperf3 >/dev/null || { echo "bench/net.sh needs iperf3 (apt-get install -y iperf3)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/berth-net.XXXXXX)
export BERTH_ROOT=$WORK/state
PEER=/work/shared/peer-bench
loop_pid=
cleanup() {
  for d in "$WORK"/*/; do [ -f "$d/compose.yml" ] && (cd "$d" && "$BERTH" down -t 0 --progress quiet >/dev/null 2>&1 || true); done
  [ -n "$loop_pid" ] && kill "$loop_pid" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ms() { local a=${1/./} b=${2/./}; echo $(( (10#$b - 10#$a) / 1000 )); }
median() { sort -n | awk '{v[NR]=$1} END{print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }

# --- 1. setup cost -----------------------------------------------------------------------
declare -A UP
for mode in host none bridge; do
  D=$WORK/$mode; mkdir -p "$D"
  { echo "name: bnet$mode"; echo 'services:'
    for i in $(seq "$N"); do
      printf '  s%d:\n    image: host\n    command: [sleep, "3600"]\n' "$i"
      [ "$mode" != bridge ] && printf '    network_mode: %s\n' "$mode"
    done
  } > "$D/compose.yml"
  ups=()
  for r in $(seq "$RUNS"); do
    t0=$EPOCHREALTIME; (cd "$D" && "$BERTH" up -d --progress quiet); t1=$EPOCHREALTIME
    ups+=("$(ms "$t0" "$t1")")
    (cd "$D" && "$BERTH" down -t 0 --progress quiet)
  done
  UP[$mode]=$(printf '%s\n' "${ups[@]}" | median)
done
per() { awk -v a="$1" -v b="$2" -v n="$N" 'BEGIN{printf "%.2f", (b-a)/n}'; }
echo "network setup, N=$N containers (up -d, median of $RUNS):"
printf '  %-34s %8s ms\n' "network_mode host (no netns)" "${UP[host]}" \
  "network_mode none (netns, lo)" "${UP[none]}" "default bridge (netns+veth+addr)" "${UP[bridge]}"
printf '  %-34s %8s ms per container\n' "netns" "$(per "${UP[host]}" "${UP[none]}")" \
  "veth + address + route + name" "$(per "${UP[none]}" "${UP[bridge]}")" \
  "all of it" "$(per "${UP[host]}" "${UP[bridge]}")"

if [ "$PODMAN" = 1 ] && command -v podman >/dev/null && [ -f "$PEER/common.sh" ]; then
  # shellcheck disable=SC1091
  ( source "$PEER/common.sh"; set +e
    if podman image exists localhost/bb 2>/dev/null; then
      hugetlb_v1_on
      for net in bridge none; do
        ts=()
        for r in $(seq 10); do
          t0=$EPOCHREALTIME; podman run --rm --network "$net" localhost/bb true >/dev/null 2>&1; t1=$EPOCHREALTIME
          ts+=("$(ms "$t0" "$t1")")
        done
        printf '  %-34s %8s ms\n' "podman run --rm, $net" "$(printf '%s\n' "${ts[@]}" | median)"
      done
      hugetlb_v1_off
    fi )
fi

# --- 2. throughput -----------------------------------------------------------------------
D=$WORK/tput; mkdir -p "$D"
cat > "$D/compose.yml" <<'EOF'
name: bnettput
services:
  srv:
    image: host
    command: [iperf3, -s, -p, "5201"]
    ports: ["5201"]
  cli:
    image: host
    command: [sleep, "3600"]
EOF
(cd "$D" && "$BERTH" up -d --progress quiet)
gbps() { python3 -c 'import sys,json; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
sleep 0.5
c2c=$(cd "$D" && "$BERTH" exec cli iperf3 -c srv -p 5201 -t "$T" -J | gbps)
pub=$(cd "$D" && "$BERTH" port srv 5201 | cut -d: -f2)
proxy=$(iperf3 -c 127.0.0.1 -p "$pub" -t "$T" -J | gbps)
(cd "$D" && "$BERTH" down -t 0 --progress quiet)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iperf3 -s -p "$port" -B 127.0.0.1 >/dev/null 2>&1 & loop_pid=$!
sleep 0.3
lo=$(iperf3 -c 127.0.0.1 -p "$port" -t "$T" -J | gbps)
kill "$loop_pid"; loop_pid=
echo "TCP throughput (iperf3, ${T} s, one stream):"
printf '  %-34s %8s Gbit/s\n' "container -> container (bridge)" "$c2c" \
  "host -> published port (proxy)" "$proxy" "host loopback (reference)" "$lo"
