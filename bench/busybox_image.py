"""A docker-save tarball of Debian's busybox-static and its applet links, for the benchmarks
(offline). Usage: python3 bench/busybox_image.py OUT.tar TAG"""
import hashlib, io, json, sys, tarfile, subprocess
out, tag = sys.argv[1], sys.argv[2]
applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split()
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    for d in ["bin", "tmp", "etc"]:
        i = tarfile.TarInfo(d); i.type = tarfile.DIRTYPE; i.mode = 0o1777 if d == "tmp" else 0o755; t.addfile(i)
    data = open("/bin/busybox", "rb").read()
    i = tarfile.TarInfo("bin/busybox"); i.size = len(data); i.mode = 0o755; t.addfile(i, io.BytesIO(data))
    for a in applets:
        if a == "busybox": continue
        i = tarfile.TarInfo("bin/" + a); i.type = tarfile.SYMTYPE; i.linkname = "busybox"; t.addfile(i)
    for name, text in [("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")]:
        b = text.encode(); i = tarfile.TarInfo(name); i.size = len(b); i.mode = 0o644; t.addfile(i, io.BytesIO(b))
layer = buf.getvalue()
diff = "sha256:" + hashlib.sha256(layer).hexdigest()
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                  "rootfs": {"type": "layers", "diff_ids": [diff]},
                  "history": [{"created_by": "busybox-static from Debian"}]}).encode()
cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
with tarfile.open(out, "w") as t:
    for name, b in [("layer.tar", layer), (cfg_name, cfg),
                    ("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode())]:
        i = tarfile.TarInfo(name); i.size = len(b); i.mode = 0o644; t.addfile(i, io.BytesIO(b))
