#!/bin/bash
# up -d / down of generated projects of N `sleep` services, and the host memory per running
# container (PSS of every berth process of the project: supervisor and inits, divided by N),
# side by side with podman-compose on the same file when podman and its bb image are present
# (see ../shared/peer-bench: 00-build-image.sh makes localhost/bb; common.sh makes podman run).
#
# With CRUN=1 (and crun installed), N detached `crun run -d` of `sleep` on a busybox root
# and their `crun delete -f` are timed beside it: the low-level runtime alone, no compose
# layer, no bridge (crun's network namespace has only `lo`) and no monitor process, so its
# memory per container is the payload's alone (not shown). That is the peer inside the VM
# (.ci/vm-run), where podman's and docker's daemons and stores are not set up.
#
# Usage (root): cargo build --release && bench/updown.sh            # N = 10 50 200, 5 runs
#               NS="10 50" RUNS=3 PODMAN=0 CRUN=1 bench/updown.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BERTH=${BERTH:-$PWD/target/release/berth}
NS=${NS:-"10 50 200"}; RUNS=${RUNS:-5}; PODMAN=${PODMAN:-1}; SETTLE=${SETTLE:-5}; CRUN=${CRUN:-0}
WORK=$(mktemp -d /tmp/berth-updown.XXXXXX)
export BERTH_ROOT=$WORK/state
IMAGE=host
PEER=/work/shared/peer-bench
have_podman=0
if [ "$PODMAN" = 1 ] && command -v podman-compose >/dev/null && [ -f "$PEER/common.sh" ]; then
  # shellcheck disable=SC1091
  source "$PEER/common.sh"; set +e
  if podman image exists localhost/bb 2>/dev/null; then
    podman save -o "$WORK/bb.tar" localhost/bb >/dev/null && "$BERTH" image import "$WORK/bb.tar" >/dev/null \
      && IMAGE=localhost/bb && have_podman=1
  fi
  set -e
fi
# podman's netavark turns the host's IPv4 forwarding on and leaves it so: put it back after.
FORWARD_BEFORE=$(cat /proc/sys/net/ipv4/ip_forward)
cleanup() {
  for d in "$WORK"/p*; do [ -d "$d" ] && (cd "$d" && "$BERTH" down -t 0 --progress quiet >/dev/null 2>&1 || true); done
  [ "$have_podman" = 1 ] && hugetlb_v1_off 2>/dev/null || true
  [ "$have_podman" = 1 ] && echo "$FORWARD_BEFORE" > /proc/sys/net/ipv4/ip_forward || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ms() { local a=${1/./} b=${2/./}; echo $(( (10#$b - 10#$a) / 1000 )); }
median() { sort -n | awk '{v[NR]=$1} END{print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }
pss() { local t=0 v; for p in "$@"; do v=$(awk '$1=="Pss:"{print $2}' /proc/$p/smaps_rollup 2>/dev/null); t=$((t+${v:-0})); done; echo $t; }

printf '%-16s %6s %12s %12s %18s\n' tool N "up -d (ms)" "down (ms)" "KiB/container"
for N in $NS; do
  P=p$N; D=$WORK/$P; mkdir -p "$D"
  { echo "name: bench$N"; echo 'services:'
    for i in $(seq "$N"); do printf '  s%d:\n    image: %s\n    command: [sleep, "3600"]\n' "$i" "$IMAGE"; done
  } > "$D/compose.yml"
  ups=(); downs=(); mems=()
  for r in $(seq "$RUNS"); do
    t0=$EPOCHREALTIME; (cd "$D" && "$BERTH" up -d --progress quiet); t1=$EPOCHREALTIME
    ups+=("$(ms "$t0" "$t1")")
    sleep "$SETTLE"   # idle: the supervisor waits in berth-idle after 2 s without work
    sup=$(cut -d' ' -f1 "$BERTH_ROOT/projects/bench$N/supervisor.pid")
    inits=$(cd "$D" && "$BERTH" ps --format json | python3 -c 'import sys,json; print(" ".join(str(json.loads(l)["Pid"]) for l in sys.stdin))')
    kids=$(ps -o pid= --ppid "$sup" | tr "\n" " " || true)
    mems+=("$(( $(pss $sup $kids $inits) / N ))")
    t0=$EPOCHREALTIME; (cd "$D" && "$BERTH" down -t 0 --progress quiet); t1=$EPOCHREALTIME
    downs+=("$(ms "$t0" "$t1")")
  done
  printf '%-16s %6s %12s %12s %18s\n' berth "$N" "$(printf '%s\n' "${ups[@]}" | median)" \
    "$(printf '%s\n' "${downs[@]}" | median)" "$(printf '%s\n' "${mems[@]}" | median)"
  if [ "$CRUN" = 1 ] && command -v crun >/dev/null; then
    B=$WORK/crun-bundle
    if [ ! -d "$B" ]; then
      mkdir -p "$B/rootfs/bin" "$B/rootfs/proc" "$B/rootfs/dev" "$B/rootfs/sys" "$B/rootfs/tmp"
      cp "$(command -v busybox)" "$B/rootfs/bin/busybox"; ln -s busybox "$B/rootfs/bin/sleep"
      (cd "$B" && crun spec && python3 - <<'PY'
import json
c = json.load(open("config.json"))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/sleep", "3600"]
c["root"]["readonly"] = True
json.dump(c, open("config.json", "w"))
PY
      )
    fi
    # crun 1.8 refuses a hybrid host whose cgroup2 holds a controller (hugetlb, here): give it
    # a v1 hierarchy for the runs, as a stock systemd hybrid host has, and take it away after.
    hug=0
    if grep -qw hugetlb /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null; then
      mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb && hug=1
    fi
    ups=(); downs=()
    for r in $(seq "$RUNS"); do
      t0=$EPOCHREALTIME
      for i in $(seq "$N"); do crun run -d --bundle "$B" "bench$N-$i" </dev/null >/dev/null 2>&1; done
      t1=$EPOCHREALTIME; ups+=("$(ms "$t0" "$t1")")
      t0=$EPOCHREALTIME
      for i in $(seq "$N"); do crun delete -f "bench$N-$i" >/dev/null 2>&1; done
      t1=$EPOCHREALTIME; downs+=("$(ms "$t0" "$t1")")
    done
    if [ "$hug" = 1 ]; then
      # Only once the kernel has released crun's cgroups (the hierarchy counts its root alone):
      # unmounted earlier, the hierarchy lingers unseen and keeps hugetlb from cgroup2.
      for i in $(seq 100); do
        find /sys/fs/cgroup/hugetlb -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null || true
        [ "$(awk '$1=="hugetlb"{print $3}' /proc/cgroups)" = 1 ] && break; sleep 0.2
      done
      umount /sys/fs/cgroup/hugetlb
      rmdir /sys/fs/cgroup/hugetlb 2>/dev/null || true
    fi
    printf '%-16s %6s %12s %12s %18s\n' "crun run -d" "$N" "$(printf '%s\n' "${ups[@]}" | median)" \
      "$(printf '%s\n' "${downs[@]}" | median)" "-"
  fi
  if [ "$have_podman" = 1 ] && [ "$N" -le 50 ]; then
    hugetlb_v1_on
    t0=$EPOCHREALTIME; podman-compose -p "pc$N" -f "$D/compose.yml" up -d >/dev/null 2>&1; t1=$EPOCHREALTIME
    up=$(ms "$t0" "$t1")
    t0=$EPOCHREALTIME; podman-compose -p "pc$N" -f "$D/compose.yml" down -t 0 >/dev/null 2>&1; t1=$EPOCHREALTIME
    podman network rm -f "pc${N}_default" >/dev/null 2>&1 || true
    hugetlb_v1_off
    printf '%-16s %6s %12s %12s %18s\n' podman-compose "$N" "$up" "$(ms "$t0" "$t1")" "(see peer-bench)"
  fi
done
