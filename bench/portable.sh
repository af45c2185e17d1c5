#!/bin/bash
# Export/import benchmark (root; needs busybox-static): the project of the portability test
# (two services on an imported busybox image, a private disk holding DATA_MB of random data,
# a named volume of FILES small files) exported while it runs and imported into a fresh
# state root under another name, against a plain GNU tar (sparse, -S) of the same bytes (the
# project directory, the image blobs, the volume and the disk image) written and extracted
# the same way. Median of RUNS each; the ratio is (export + import) / (tar c + tar x).
#
# Usage: cargo build --release && bench/portable.sh      # DATA_MB=50 FILES=500 RUNS=5
set -euo pipefail
cd "$(dirname "$0")/.."
BERTH=${BERTH:-$PWD/target/release/berth}
DATA_MB=${DATA_MB:-50}; FILES=${FILES:-500}; RUNS=${RUNS:-5}
WORK=$(mktemp -d /tmp/berth-portable.XXXXXX)
export BERTH_ROOT=$WORK/root
P=$WORK/pbench
cleanup() {
  (cd "$P" 2>/dev/null && "$BERTH" down -v -t 0 --progress quiet >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ms() { local a=${1/./} b=${2/./}; echo $(( (10#$b - 10#$a) / 1000000 )); }
median() { sort -n | awk '{v[NR]=$1} END{print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }

python3 bench/busybox_image.py "$WORK/bb.tar" localhost/bench-bb:1
mkdir -p "$P"
cat > "$P/berth.yaml" <<'YAML'
name: pbench
services:
  db:
    image: localhost/bench-bb:1
    command: [sleep, '3600']
    network_mode: none
    disks: [store:/data]
    volumes: [cache:/cache]
  web:
    image: localhost/bench-bb:1
    command: [sleep, '3600']
    network_mode: none
    volumes: [cache:/cache]
volumes:
  cache: {}
disks:
  store: {kind: private, size: 256m}
YAML
cd "$P"
"$BERTH" image import "$WORK/bb.tar" >/dev/null
"$BERTH" up -d --wait --progress quiet >/dev/null
"$BERTH" exec -T db sh -c "dd if=/dev/urandom of=/data/blob bs=1M count=$DATA_MB 2>/dev/null"
"$BERTH" exec -T web sh -c "mkdir -p /cache/f && i=0; while [ \$i -lt $FILES ]; do echo file \$i > /cache/f/\$i; i=\$((i+1)); done"
sync

EXP=(); IMP=(); TC=(); TX=()
for r in $(seq "$RUNS"); do
  rm -rf "$WORK/to" "$WORK/plain" "$WORK/a.tar" "$WORK/plain.tar"
  mkdir -p "$WORK/to" "$WORK/plain"
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  t0=$(date +%s.%N)
  "$BERTH" export -o "$WORK/a.tar" --progress quiet
  t1=$(date +%s.%N)
  (cd "$WORK/to" && BERTH_ROOT=$WORK/to/root "$BERTH" import "$WORK/a.tar" -p moved --progress quiet)
  t2=$(date +%s.%N)
  EXP+=("$(ms "$t0" "$t1")"); IMP+=("$(ms "$t1" "$t2")")

  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  t0=$(date +%s.%N)
  tar -cSf "$WORK/plain.tar" -C "$WORK" pbench \
    -C "$BERTH_ROOT" images/blobs volumes/pbench_cache disks/pbench_store/disk.img
  t1=$(date +%s.%N)
  tar -xSf "$WORK/plain.tar" -C "$WORK/plain"
  t2=$(date +%s.%N)
  TC+=("$(ms "$t0" "$t1")"); TX+=("$(ms "$t1" "$t2")")
done
e=$(printf '%s\n' "${EXP[@]}" | median); i=$(printf '%s\n' "${IMP[@]}" | median)
c=$(printf '%s\n' "${TC[@]}" | median); x=$(printf '%s\n' "${TX[@]}" | median)
size=$(stat -c %s "$WORK/a.tar"); psize=$(stat -c %s "$WORK/plain.tar")
echo "project: ${DATA_MB} MB on a private disk, ${FILES} files in a volume, one image; median of $RUNS"
printf '%-28s %8s %8s %8s %12s\n' "" export import total archive
printf '%-28s %6s ms %6s ms %6s ms %10s B\n' "berth export | import" "$e" "$i" "$((e + i))" "$size"
printf '%-28s %6s ms %6s ms %6s ms %10s B\n' "tar -cS | tar -xS" "$c" "$x" "$((c + x))" "$psize"
awk -v a=$((e + i)) -v b=$((c + x)) 'BEGIN{printf "ratio (berth / tar): %.2f (target: at most 1.5)\n", a/b}'
