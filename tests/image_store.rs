//! The image store against tarballs built here: docker-save (every layout) and OCI layout,
//! whiteouts converted for overlayfs, shared layers stored once, corrupt, truncated and
//! hostile tarballs refused with the store left as it was. Needs root (device nodes,
//! `trusted.*` xattrs, chown), as CI runs it.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth::image::testutil::{self, DockerLayout, LayerBuilder, TestImage};
use berth::image::{ImageError, ImageStore};
use serde_json::json;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// A path longer than the 100 bytes of a plain tar header's name field.
const LONG: &str = "long/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/cccccccccccccccccccc";

/// The base layer: a bit of everything.
fn base_layer() -> Vec<u8> {
    LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/keep", b"kept\n", 0o644)
        .file("etc/gone", b"deleted above\n", 0o600)
        .dir("data", 0o750)
        .file("data/old", b"hidden by the opaque dir above\n", 0o644)
        .dir("data/sub", 0o755)
        .file("data/sub/deep", b"also hidden\n", 0o644)
        .dir("bin", 0o755)
        .file_owned("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755, 1000, 1000)
        .symlink("bin/alias", "tool")
        .symlink("bin/abs", "/etc/passwd")
        .symlink_with_xattrs(
            "bin/labelled",
            "tool",
            &[("trusted.berth", b"1"), ("user.refused", b"1")],
        )
        .hardlink("bin/tool2", "bin/tool")
        .fifo("run-fifo")
        .dir("dev", 0o755)
        .device("dev/null", false, 1, 3)
        .device("dev/loop9", true, 7, 9)
        .file_with_xattrs(
            "etc/xattrs",
            b"x",
            &[
                ("user.berth", b"yes"),
                ("trusted.overlay.redirect", b"/etc"),
            ],
        )
        .file(&format!("{LONG}/file"), b"long\n", 0o644)
        .finish()
}

/// The upper layer: deletes `etc/gone`, makes `data` opaque and adds `data/new`.
fn upper_layer() -> Vec<u8> {
    LayerBuilder::new()
        .dir("etc", 0o755)
        .whiteout("etc/gone")
        .dir("data", 0o750)
        .opaque("data")
        .file("data/new", b"new\n", 0o644)
        .finish()
}

fn image(tags: &[&str], layers: Vec<Vec<u8>>, gzip: bool) -> TestImage {
    TestImage {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        layers,
        gzip_layers: gzip,
        config: json!({
            "Entrypoint": ["/bin/tool"],
            "Cmd": ["--serve"],
            "Env": ["PATH=/bin", "A=1"],
            "WorkingDir": "/data",
            "User": "1000:1000",
            "StopSignal": "SIGQUIT",
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
            "Volumes": {"/data": {}},
            "Labels": {"org.example": "yes"},
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 2_000_000_000i64, "Timeout": 1_000_000_000i64, "StartPeriod": 0, "Retries": 3},
        }),
    }
}

/// Every path under `dir` with its kind and size: what "the store is unchanged" compares.
/// A store holding one good image, and a snapshot of it to compare against after a refused
/// import.
fn store_with_one_image(root: &Path) -> (ImageStore, BTreeSet<(PathBuf, String, u64)>) {
    let store = ImageStore::open(root).unwrap();
    let good = root.join("good.tar");
    testutil::docker_save(
        &good,
        &[image(&["good"], vec![base_layer()], false)],
        DockerLayout::Legacy,
        false,
    );
    store.import(&good).unwrap();
    let before = snapshot(store.dir());
    (store, before)
}

fn snapshot(dir: &Path) -> BTreeSet<(PathBuf, String, u64)> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let kind = format!("{:?}", m.file_type());
            out.insert((
                e.path().strip_prefix(dir).unwrap().to_path_buf(),
                kind,
                if m.is_file() { m.len() } else { 0 },
            ));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

fn layer_dirs(store: &ImageStore) -> usize {
    fs::read_dir(store.dir().join("layers/sha256"))
        .unwrap()
        .count()
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn docker_save_and_oci_layout_share_layers_and_convert_whiteouts() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let (base, upper) = (base_layer(), upper_layer());
    let other = LayerBuilder::new().file("other", b"o", 0o644).finish();

    let a = image(&["a"], vec![base.clone(), upper.clone()], false);
    let a_tar = t.path().join("a.tar");
    testutil::docker_save(
        &a_tar,
        std::slice::from_ref(&a),
        DockerLayout::Legacy,
        false,
    );
    let infos = store.import(&a_tar).unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].repository.as_deref(), Some("a"));
    assert_eq!(infos[0].tag.as_deref(), Some("latest"));
    assert_eq!(infos[0].id, a.id());
    assert_eq!(
        infos[0].size,
        (base.len() + upper.len()) as u64,
        "size is the sum of the uncompressed layers"
    );
    assert_eq!(infos[0].created.as_deref(), Some("2023-11-14T22:13:20Z"));

    // The OCI image shares the base layer (gzip-compressed this time: same DiffID).
    let b = image(
        &["example.com/b:1.0"],
        vec![base.clone(), other.clone()],
        true,
    );
    let b_tar = t.path().join("b.tar.gz");
    testutil::oci_layout(&b_tar, std::slice::from_ref(&b), true, true);
    let infos = store.import(&b_tar).unwrap();
    assert_eq!(infos[0].repository.as_deref(), Some("example.com/b"));
    assert_eq!(infos[0].tag.as_deref(), Some("1.0"));
    assert_eq!(
        layer_dirs(&store),
        3,
        "the shared base layer is stored once"
    );

    let img = store.resolve("a").unwrap();
    assert_eq!(img.id, a.id());
    assert_eq!(img.layers.len(), 2);
    let (lower, top) = (&img.layers[0], &img.layers[1]);
    assert!(lower.ends_with(&testutil::sha256(&base)[7..]));
    assert_eq!(
        store.resolve("example.com/b:1.0").unwrap().layers[0],
        *lower
    );

    // The base layer, as the tar had it.
    assert_eq!(fs::read(lower.join("etc/keep")).unwrap(), b"kept\n");
    let tool = fs::symlink_metadata(lower.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid survives chown");
    assert_eq!((tool.uid(), tool.gid()), (1000, 1000));
    assert_eq!(tool.mtime(), 1_700_000_000);
    assert_eq!(
        fs::read_link(lower.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        fs::read_link(lower.join("bin/abs")).unwrap(),
        Path::new("/etc/passwd"),
        "absolute symlinks are kept as written, never followed"
    );
    let tool2 = fs::symlink_metadata(lower.join("bin/tool2")).unwrap();
    assert_eq!(tool2.ino(), tool.ino(), "hardlink");
    assert!(
        fs::symlink_metadata(lower.join("run-fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        fs::symlink_metadata(lower.join("data")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        fs::symlink_metadata(lower.join("data")).unwrap().mtime(),
        1_700_000_000
    );

    let null = fs::symlink_metadata(lower.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let lp = fs::symlink_metadata(lower.join("dev/loop9")).unwrap();
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), rustix::fs::makedev(7, 9));
    assert_eq!(
        xattr(&lower.join("etc/xattrs"), "user.berth").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        xattr(&lower.join("etc/xattrs"), "trusted.overlay.redirect"),
        None,
        "a layer cannot set overlayfs' own xattrs"
    );
    assert_eq!(fs::read(lower.join(LONG).join("file")).unwrap(), b"long\n");
    assert_eq!(
        xattr(&lower.join("bin/labelled"), "trusted.berth").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(xattr(&lower.join("bin/labelled"), "user.refused"), None);

    // The upper layer, in overlayfs' format.
    let wh = fs::symlink_metadata(top.join("etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device(), "whiteout is a char device");
    assert_eq!(wh.rdev(), 0, "whiteout is 0:0");
    assert!(!top.join("etc/.wh.gone").exists());
    assert_eq!(
        xattr(&top.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top.join("data/.wh..wh..opq").exists());
    assert_eq!(fs::read(top.join("data/new")).unwrap(), b"new\n");
    assert_eq!(xattr(&top.join("etc"), "trusted.overlay.opaque"), None);

    // The config.
    let c = &img.config;
    assert_eq!(c.entrypoint, Some(vec!["/bin/tool".to_string()]));
    assert_eq!(c.cmd, Some(vec!["--serve".to_string()]));
    assert_eq!(c.env, ["PATH=/bin", "A=1"]);
    assert_eq!(c.working_dir.as_deref(), Some("/data"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(c.exposed_ports, ["53/udp", "8080/tcp"]);
    assert_eq!(c.volumes, ["/data"]);
    assert_eq!(c.labels.get("org.example").map(String::as_str), Some("yes"));
    let h = c.healthcheck.clone().unwrap();
    assert_eq!(h.test, ["CMD", "true"]);
    assert_eq!(h.interval, Some(std::time::Duration::from_secs(2)));
    assert_eq!(h.start_period, None);
    assert_eq!(h.retries, Some(3));

    // Names.
    for r in [
        "a:latest",
        "docker.io/library/a",
        "docker.io/library/a:latest",
        &a.id(),
        &a.id()[..15],
        &a.id()[7..19],
    ] {
        assert_eq!(store.resolve(r).unwrap().id, a.id(), "{r}");
    }
    assert!(matches!(
        store.resolve("a:2"),
        Err(ImageError::NotFound { .. })
    ));
    assert!(matches!(
        store.resolve("example.com/b"),
        Err(ImageError::NotFound { .. })
    ));
    let list = store.list().unwrap();
    assert_eq!(list.len(), 2);

    // Importing again unpacks nothing again.
    let ino = fs::metadata(lower).unwrap().ino();
    store.import(&a_tar).unwrap();
    assert_eq!(fs::metadata(lower).unwrap().ino(), ino);
    assert_eq!(layer_dirs(&store), 3);
    assert_eq!(fs::read_dir(store.dir().join("tmp")).unwrap().count(), 0);
}

#[test]
fn every_docker_save_layout_and_compression() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let layers = vec![base_layer(), upper_layer()];
    let cases = [
        ("legacy", DockerLayout::Legacy, false, false),
        ("blobs", DockerLayout::Blobs, false, true),
        ("symlinks", DockerLayout::BlobsViaSymlinks, true, false),
        ("gzip", DockerLayout::Legacy, true, true),
    ];
    for (name, layout, gzip_layers, gzip_outer) in cases {
        let img = image(&[&format!("img:{name}")], layers.clone(), gzip_layers);
        let path = t.path().join(format!("{name}.tar"));
        testutil::docker_save(&path, std::slice::from_ref(&img), layout, gzip_outer);
        let infos = store
            .import(&path)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(infos[0].id, img.id());
        assert_eq!(
            store.resolve(&format!("img:{name}")).unwrap().layers.len(),
            2
        );
    }
    assert_eq!(
        layer_dirs(&store),
        2,
        "same DiffIDs, whatever the compression"
    );
    // Two images and an untagged one in one tarball.
    let one = image(&["multi:1", "multi:one"], vec![base_layer()], false);
    let two = image(&[], vec![upper_layer()], false);
    let path = t.path().join("multi.tar");
    testutil::docker_save(
        &path,
        &[one.clone(), two.clone()],
        DockerLayout::Blobs,
        false,
    );
    let infos = store.import(&path).unwrap();
    assert_eq!(infos.len(), 3);
    assert!(
        infos
            .iter()
            .any(|i| i.id == two.id() && i.repository.is_none())
    );
    assert_eq!(store.resolve("multi:one").unwrap().id, one.id());
    assert_eq!(store.resolve(&two.id()).unwrap().id, two.id());
}

#[test]
fn corrupt_blobs_are_refused_and_the_store_is_unchanged() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let (store, before) = store_with_one_image(t.path());

    let img = image(&["bad"], vec![base_layer(), upper_layer()], true);
    // OCI: a layer blob with one byte flipped no longer matches its name.
    let mut members = testutil::oci_layout_members(std::slice::from_ref(&img), false);
    let blob = &img.blobs()[1];
    let hex = &testutil::sha256(blob)[7..];
    let mut flipped = blob.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    members.replace(&format!("blobs/sha256/{hex}"), flipped.clone());
    let path = t.path().join("flipped-oci.tar");
    members.write(&path, false);
    let err = store.import(&path).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(hex), "names the blob: {err}");
    assert_eq!(snapshot(store.dir()), before);

    // docker-save (legacy): layer.tar has no digest of its own; the DiffID check catches it.
    let img = image(&["bad"], vec![base_layer(), upper_layer()], false);
    let mut members =
        testutil::docker_save_members(std::slice::from_ref(&img), DockerLayout::Legacy);
    let layer = &img.layers[1];
    let hex = &testutil::sha256(layer)[7..];
    let mut flipped = layer.clone();
    // In a file's content, not a header: the tar stays readable and only the hash tells.
    let at = flipped.windows(4).position(|w| w == b"new\n").unwrap();
    flipped[at] ^= 0x20;
    members.replace(&format!("{hex}/layer.tar"), flipped);
    let path = t.path().join("flipped-docker.tar");
    members.write(&path, false);
    let err = store.import(&path).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    assert!(err.to_string().contains(hex), "names the layer: {err}");
    assert_eq!(snapshot(store.dir()), before);

    // A manifest naming a config the tarball lacks.
    let mut members =
        testutil::docker_save_members(std::slice::from_ref(&img), DockerLayout::Blobs);
    members.replace(
        "manifest.json",
        serde_json::to_vec(&json!([{"Config": "nope.json", "RepoTags": ["x"], "Layers": []}]))
            .unwrap(),
    );
    let path = t.path().join("missing-config.tar");
    members.write(&path, false);
    let err = store.import(&path).unwrap_err();
    assert!(matches!(err, ImageError::MissingMember { .. }), "{err}");
    assert_eq!(snapshot(store.dir()), before);
    assert!(matches!(
        store.resolve("bad"),
        Err(ImageError::NotFound { .. })
    ));
}

#[test]
fn truncated_tarballs_are_refused_and_the_store_is_unchanged() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let (store, before) = store_with_one_image(t.path());
    let img = image(&["cut"], vec![base_layer(), upper_layer()], false);
    for (name, gzip, oci) in [
        ("plain", false, false),
        ("gzip", true, false),
        ("oci", false, true),
        ("oci-gz", true, true),
    ] {
        let path = t.path().join(format!("{name}.tar"));
        if oci {
            testutil::oci_layout(&path, std::slice::from_ref(&img), false, gzip);
        } else {
            testutil::docker_save(
                &path,
                std::slice::from_ref(&img),
                DockerLayout::Legacy,
                gzip,
            );
        }
        let bytes = fs::read(&path).unwrap();
        for cut in [bytes.len() / 3, bytes.len() * 2 / 3, bytes.len() - 700] {
            testutil::write_file(&path, &bytes[..cut]);
            let err = store.import(&path).unwrap_err();
            assert!(
                matches!(
                    err,
                    ImageError::ReadTarball { .. }
                        | ImageError::TruncatedMember { .. }
                        | ImageError::MissingMember { .. }
                        | ImageError::UnknownFormat { .. }
                ),
                "{name} cut at {cut}: {err}"
            );
            assert_eq!(snapshot(store.dir()), before, "{name} cut at {cut}");
        }
    }
    assert!(matches!(
        store.resolve("cut"),
        Err(ImageError::NotFound { .. })
    ));
}

#[test]
fn entries_escaping_the_layer_are_refused() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let before = snapshot(store.dir());
    let out = outside.to_str().unwrap().as_bytes();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            LayerBuilder::new()
                .raw(b"../evil", tar::EntryType::Regular, None, b"x")
                .finish(),
        ),
        (
            "nested dotdot",
            LayerBuilder::new()
                .dir("a", 0o755)
                .raw(b"a/../../evil", tar::EntryType::Regular, None, b"x")
                .finish(),
        ),
        (
            "absolute",
            LayerBuilder::new()
                .raw(b"/evil", tar::EntryType::Regular, None, b"x")
                .finish(),
        ),
        (
            "through a symlink",
            LayerBuilder::new()
                .raw(b"link", tar::EntryType::Symlink, Some(out), b"")
                .raw(b"link/evil", tar::EntryType::Regular, None, b"x")
                .finish(),
        ),
        (
            "through a relative symlink",
            LayerBuilder::new()
                .raw(b"link", tar::EntryType::Symlink, Some(b".."), b"")
                .raw(b"link/evil", tar::EntryType::Regular, None, b"x")
                .finish(),
        ),
        (
            "whiteout through a symlink",
            LayerBuilder::new()
                .raw(b"link", tar::EntryType::Symlink, Some(out), b"")
                .raw(b"link/.wh.victim", tar::EntryType::Regular, None, b"")
                .finish(),
        ),
        (
            "hardlink outside",
            LayerBuilder::new()
                .raw(b"h", tar::EntryType::Link, Some(b"../../etc/passwd"), b"")
                .finish(),
        ),
    ];
    fs::write(outside.join("victim"), b"still here").unwrap();
    for (name, layer) in cases {
        let path = t.path().join("evil.tar");
        testutil::docker_save(
            &path,
            &[image(&["evil"], vec![layer], false)],
            DockerLayout::Legacy,
            false,
        );
        let err = store.import(&path).unwrap_err();
        assert!(
            matches!(err, ImageError::UnsafeEntry { .. }),
            "{name}: {err}"
        );
        assert_eq!(snapshot(store.dir()), before, "{name}");
        assert!(
            !t.path().join("evil").exists() && !outside.join("evil").exists(),
            "{name}"
        );
        assert_eq!(
            fs::read(outside.join("victim")).unwrap(),
            b"still here",
            "{name}"
        );
    }
}

#[test]
fn remove_refuses_in_use_images_and_collects_garbage() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let (base, upper, other) = (
        base_layer(),
        upper_layer(),
        LayerBuilder::new().file("o", b"o", 0o644).finish(),
    );
    let a = image(&["a", "a:alias"], vec![base.clone(), upper], false);
    let b = image(&["b"], vec![base, other], true);
    let path = t.path().join("ab.tar");
    testutil::oci_layout(&path, &[a.clone(), b.clone()], false, false);
    store.import(&path).unwrap();
    assert_eq!(layer_dirs(&store), 3);

    // Removing one of two tags only untags.
    let r = store.remove("a:alias", &|_| true).unwrap();
    assert_eq!(r.untagged, ["a:alias"]);
    assert_eq!(r.deleted, None);
    // The last tag of an image in use: refused, and nothing changes.
    let err = store.remove("a", &|id| id == a.id()).unwrap_err();
    assert!(matches!(err, ImageError::InUse { .. }), "{err}");
    assert_eq!(store.resolve("a").unwrap().id, a.id());

    let r = store
        .remove("docker.io/library/a:latest", &|_| false)
        .unwrap();
    assert_eq!(r.deleted.as_deref(), Some(a.id().as_str()));
    assert_eq!(r.layers_freed, 1, "the shared base layer stays for b");
    assert_eq!(layer_dirs(&store), 2);
    assert!(store.resolve("b").is_ok());
    assert!(matches!(
        store.resolve("a"),
        Err(ImageError::NotFound { .. })
    ));

    let r = store.remove(&b.id()[..12], &|_| false).unwrap();
    assert_eq!(r.untagged, ["b:latest"]);
    assert_eq!(layer_dirs(&store), 0);
    assert_eq!(
        fs::read_dir(store.dir().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert!(store.list().unwrap().is_empty());
    assert!(matches!(
        store.remove("b", &|_| false),
        Err(ImageError::NotFound { .. })
    ));
}

#[test]
fn reimporting_a_tag_moves_it_and_leaves_the_old_image_untagged() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let v1 = image(&["app"], vec![base_layer()], false);
    let v2 = image(
        &["docker.io/library/app:latest"],
        vec![upper_layer()],
        false,
    );
    for (i, img) in [&v1, &v2].into_iter().enumerate() {
        let path = t.path().join(format!("{i}.tar"));
        testutil::docker_save(&path, std::slice::from_ref(img), DockerLayout::Blobs, false);
        store.import(&path).unwrap();
    }
    assert_eq!(store.resolve("app").unwrap().id, v2.id());
    let list = store.list().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().any(|i| i.id == v1.id() && i.tag.is_none()));

    // Pruning spares an untagged image in use, then takes it once it is not.
    let r = store.prune(&|id| id == v1.id()).unwrap();
    assert!(r.pruned.is_empty());
    assert_eq!(store.resolve(&v1.id()).unwrap().id, v1.id());
    let r = store.prune(&|_| false).unwrap();
    assert_eq!(r.pruned, [v1.id()]);
    assert_eq!(r.layers_freed, 1);
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(store.resolve("app").unwrap().id, v2.id());
    // `prune -a` spares a tagged image in use, then untags and deletes it.
    let r = store.prune_images(&|id| id == v2.id(), true).unwrap();
    assert!(r.pruned.is_empty() && r.untagged.is_empty());
    let r = store.prune_images(&|_| false, true).unwrap();
    assert_eq!(r.pruned, [v2.id()]);
    assert_eq!(r.untagged.len(), 1);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(layer_dirs(&store), 0);
}

#[test]
fn not_an_image_tarball() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let path = t.path().join("x.tar");
    let mut m = testutil::Tarball::default();
    m.file("hello.txt", b"hi".to_vec());
    m.write(&path, false);
    assert!(matches!(
        store.import(&path),
        Err(ImageError::UnknownFormat { .. })
    ));
    testutil::write_file(
        &path,
        b"not a tar at all, just some bytes that are not a header",
    );
    assert!(store.import(&path).is_err());
    assert!(matches!(
        store.import(&t.path().join("absent.tar")),
        Err(ImageError::OpenTarball { .. })
    ));
}

#[test]
fn busybox_image_imports_and_resolves() {
    require_root!();
    if !testutil::busybox_available() {
        eprintln!("skipped: no /bin/busybox (apt-get install busybox-static)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let tarball = testutil::busybox_docker_save(t.path());
    let infos = store.import(&tarball).unwrap();
    assert_eq!(infos[0].repository.as_deref(), Some("busybox"));
    let img = store.resolve("docker.io/library/busybox:latest").unwrap();
    assert_eq!(img.config.cmd, Some(vec!["sh".to_string()]));
    let root = &img.layers[0];
    assert!(fs::metadata(root.join("bin/busybox")).unwrap().mode() & 0o111 != 0);
    for applet in [
        "sh", "ls", "cat", "echo", "sleep", "true", "ps", "id", "hostname", "mount",
    ] {
        assert_eq!(
            fs::read_link(root.join("bin").join(applet)).unwrap(),
            Path::new("busybox"),
            "{applet}"
        );
    }
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let out = std::process::Command::new(root.join("bin/busybox"))
        .args(["echo", "ok"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"ok\n");
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn unpacked_layers_work_as_overlayfs_lower_dirs() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let a = image(&["a"], vec![base_layer(), upper_layer()], false);
    let path = t.path().join("a.tar");
    testutil::docker_save(&path, std::slice::from_ref(&a), DockerLayout::Legacy, false);
    store.import(&path).unwrap();
    let img = store.resolve("a").unwrap();
    let lower: Vec<&str> = img
        .layers
        .iter()
        .rev()
        .map(|p| p.to_str().unwrap())
        .collect();
    let merged = t.path().join("merged");
    fs::create_dir(&merged).unwrap();
    let opts = format!("lowerdir={}", lower.join(":"));
    if let Err(e) = nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    ) {
        eprintln!("skipped: overlayfs unavailable here: {e}");
        return;
    }
    let _m = Mounted(merged.clone());
    assert_eq!(fs::read(merged.join("etc/keep")).unwrap(), b"kept\n");
    assert!(!merged.join("etc/gone").exists(), "the whiteout deletes it");
    assert!(!merged.join("data/old").exists(), "the opaque dir hides it");
    assert!(!merged.join("data/sub").exists(), "the opaque dir hides it");
    assert_eq!(fs::read(merged.join("data/new")).unwrap(), b"new\n");
    assert_eq!(
        fs::read_link(merged.join("bin/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
}

#[test]
fn later_entries_of_a_layer_replace_earlier_ones() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let layer = LayerBuilder::new()
        .dir("x", 0o755)
        .file("x/inner", b"inner", 0o644)
        .file("x", b"now a file", 0o644) // a directory replaced by a file
        .file("y", b"file", 0o644)
        .dir("y", 0o700) // a file replaced by a directory
        .symlink("z", "/etc")
        .dir("z", 0o755) // a symlink replaced by a directory: z/f must land inside
        .file("z/f", b"inside", 0o644)
        .file("w", b"first", 0o644)
        .file("w", b"second", 0o600)
        .dir("d", 0o755)
        .file("d/f", b"f", 0o644)
        .whiteout("d") // a whiteout of something the same layer made
        .finish();
    let path = t.path().join("r.tar");
    let img = image(&["r"], vec![layer], false);
    testutil::docker_save(
        &path,
        std::slice::from_ref(&img),
        DockerLayout::Legacy,
        false,
    );
    store.import(&path).unwrap();
    let root = &store.resolve("r").unwrap().layers[0];
    assert_eq!(fs::read(root.join("x")).unwrap(), b"now a file");
    assert!(fs::symlink_metadata(root.join("y")).unwrap().is_dir());
    assert!(fs::symlink_metadata(root.join("z")).unwrap().is_dir());
    assert_eq!(fs::read(root.join("z/f")).unwrap(), b"inside");
    assert_eq!(fs::read(root.join("w")).unwrap(), b"second");
    assert_eq!(
        fs::symlink_metadata(root.join("w")).unwrap().mode() & 0o777,
        0o600
    );
    assert!(
        fs::symlink_metadata(root.join("d"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[test]
fn a_shared_hold_makes_removal_wait() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let path = t.path().join("a.tar");
    let img = image(
        &["a"],
        vec![LayerBuilder::new().file("f", b"f", 0o644).finish()],
        false,
    );
    testutil::docker_save(
        &path,
        std::slice::from_ref(&img),
        DockerLayout::Legacy,
        false,
    );
    store.import(&path).unwrap();
    let hold = store.lock_shared().unwrap();
    let second = store.lock_shared().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = store.clone();
    let remover = std::thread::spawn(move || {
        let r = s2.remove("a", &|_| false);
        tx.send(()).unwrap();
        r
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err()
    );
    assert!(store.resolve("a").is_ok(), "readers need no lock");
    drop((hold, second));
    rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert!(remover.join().unwrap().is_ok());
}

#[test]
fn a_stored_blob_claimed_for_another_layer_is_verified() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let (l1, l2) = (base_layer(), upper_layer());
    let path = t.path().join("ok.tar");
    let a = image(&["a"], vec![l1.clone()], false);
    let c = image(&["c"], vec![l2.clone()], false);
    testutil::docker_save(&path, &[a, c], DockerLayout::Legacy, false);
    store.import(&path).unwrap();
    // Both the layer the config names and the blob the tarball ships are in the store, but
    // they are not each other.
    let b = image(&["b"], vec![l1.clone()], false);
    let mut members = testutil::docker_save_members(std::slice::from_ref(&b), DockerLayout::Legacy);
    members.replace(&format!("{}/layer.tar", &testutil::sha256(&l1)[7..]), l2);
    let path = t.path().join("lie.tar");
    members.write(&path, false);
    let err = store.import(&path).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
}
