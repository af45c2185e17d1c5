#!/bin/bash
# Pull benchmark (root; needs docker-registry and skopeo, podman optional): a LAYERS x LAYER_MB
# MiB image (random data, so nothing compresses) pushed to a local Debian docker-registry,
# then pulled by berth into a fresh state root, copied by `skopeo copy` to a local directory,
# and pulled by `podman pull` when podman is installed. Median of RUNS each.
#
# Usage: cargo build --release && bench/pull.sh      # LAYERS=4 LAYER_MB=25 RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."
BERTH=${BERTH:-$PWD/target/release/berth}
LAYERS=${LAYERS:-4}; LAYER_MB=${LAYER_MB:-25}; RUNS=${RUNS:-3}
WORK=$(mktemp -d /tmp/berth-pull.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
reg_pid=
cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null || true
  command -v podman >/dev/null && podman rmi -f "$REG/bench:1" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ms() { local a=${1/./} b=${2/./}; echo $(( (10#$b - 10#$a) / 1000 )); }
median() { sort -n | awk '{v[NR]=$1} END{print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }

printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/data\nhttp:\n  addr: %s\n' "$WORK" "$REG" > "$WORK/registry.yml"
docker-registry serve "$WORK/registry.yml" >/dev/null 2>&1 & reg_pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done

# A docker-save tarball of LAYERS layers of random files.
python3 - "$WORK/image.tar" "$LAYERS" "$LAYER_MB" <<'PY'
import hashlib, io, json, os, sys, tarfile
out, n, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
layers, diff_ids = [], []
for i in range(n):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        data = os.urandom(mb << 20)
        info = tarfile.TarInfo(f"data/layer{i}.bin"); info.size = len(data); info.mode = 0o644
        t.addfile(info, io.BytesIO(data))
    b = buf.getvalue(); layers.append(b); diff_ids.append("sha256:" + hashlib.sha256(b).hexdigest())
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
with tarfile.open(out, "w") as t:
    def add(name, b):
        info = tarfile.TarInfo(name); info.size = len(b); t.addfile(info, io.BytesIO(b))
    add(cfg_name, cfg)
    names = []
    for i, b in enumerate(layers):
        add(f"l{i}/layer.tar", b); names.append(f"l{i}/layer.tar")
    add("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": ["bench:1"], "Layers": names}]).encode())
PY
skopeo copy -q --dest-tls-verify=false "docker-archive:$WORK/image.tar" "docker://$REG/bench:1"

b=(); s=(); p=()
for r in $(seq "$RUNS"); do
  rm -rf "$WORK/state" "$WORK/dir"
  t0=$EPOCHREALTIME; BERTH_ROOT=$WORK/state "$BERTH" pull -q "$REG/bench:1"; t1=$EPOCHREALTIME; b+=("$(ms "$t0" "$t1")")
  t0=$EPOCHREALTIME; skopeo copy -q --src-tls-verify=false "docker://$REG/bench:1" "dir:$WORK/dir"; t1=$EPOCHREALTIME; s+=("$(ms "$t0" "$t1")")
  if command -v podman >/dev/null; then
    podman rmi -f "$REG/bench:1" >/dev/null 2>&1 || true
    t0=$EPOCHREALTIME; podman pull -q --tls-verify=false "$REG/bench:1" >/dev/null 2>&1 || true; t1=$EPOCHREALTIME; p+=("$(ms "$t0" "$t1")")
  fi
done
echo "pull of a $((LAYERS * LAYER_MB)) MiB image in $LAYERS layers from a local registry (median of $RUNS):"
printf '  %-44s %7s ms\n' "berth pull (into the store, layers unpacked)" "$(printf '%s\n' "${b[@]}" | median)"
printf '  %-44s %7s ms\n' "skopeo copy to a directory (blobs only)" "$(printf '%s\n' "${s[@]}" | median)"
[ ${#p[@]} -gt 0 ] && printf '  %-44s %7s ms\n' "podman pull (into its store)" "$(printf '%s\n' "${p[@]}" | median)"
true
