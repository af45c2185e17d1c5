//! Private disks: a fixed-size ext4 file system of its own, in a sparse image file under
//! `<root>/disks/<name>/`, attached to one container at a time.
//!
//! The image is attached to a loop device with autoclear and mounted by the container's setup
//! process inside the container's mount namespace only. The host never mounts it. When the
//! container's last process ends (a stop, a crash, `kill -9`, the supervisor gone or not),
//! the kernel unmounts it and lets the loop device go. Nothing is left to clean up, and the
//! data stays in the image until `down -v` or `berth disk rm`.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::DiskError;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` (linux/loop.h; libc does not define it).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of LOOP_CONFIGURE (Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// What berth knows of a disk (`disk.json` beside its image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskState {
    pub name: String,
    pub project: String,
    pub size: u64,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub created_at: u64,
}

pub fn disks_dir(root: &Path) -> PathBuf {
    root.join("disks")
}

fn image(root: &Path, name: &str) -> PathBuf {
    disks_dir(root).join(name).join("disk.img")
}

fn fail(disk: &str, step: &'static str, e: impl std::fmt::Display) -> DiskError {
    DiskError::Disk {
        disk: disk.to_string(),
        step,
        message: e.to_string(),
    }
}

fn run(disk: &str, step: &'static str, cmd: &mut Command) -> Result<(), DiskError> {
    let out = cmd
        .output()
        .map_err(|e| fail(disk, step, format!("{e} (install e2fsprogs)")))?;
    if !out.status.success() {
        return Err(fail(
            disk,
            step,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// The loop device that has `img` attached, if any (from sysfs).
pub fn attached(img: &Path) -> Option<String> {
    let want = fs::canonicalize(img).ok()?;
    for e in fs::read_dir("/sys/block").ok()?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with("loop") {
            continue;
        }
        if let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file"))
            && Path::new(b.trim()) == want
        {
            return Some(format!("/dev/{n}"));
        }
    }
    None
}

/// Makes the disk exist at `size` (creating or growing it; shrinking is refused) and attaches
/// it to a free loop device with autoclear. Returns the device and its open descriptor: the
/// caller holds it until the container has mounted the disk.
pub fn prepare(
    root: &Path,
    name: &str,
    project: &str,
    size: u64,
    labels: &std::collections::BTreeMap<String, String>,
    external: bool,
) -> Result<(PathBuf, OwnedFd), DiskError> {
    let img = image(root, name);
    if !img.exists() {
        if external {
            return Err(fail(
                name,
                "find",
                "it is declared `external: true` but does not exist",
            ));
        }
        create(root, name, project, size, labels)?;
    }
    // A container that just ended may still be letting its loop device go (the kernel clears
    // an autoclear device asynchronously); one still attached after that is in use.
    let until = Instant::now() + Duration::from_secs(3);
    while let Some(dev) = attached(&img) {
        if Instant::now() >= until {
            return Err(fail(
                name,
                "attach",
                format!("it is in use ({dev}): a private disk belongs to one container at a time"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let have = fs::metadata(&img).map_err(|e| fail(name, "stat", e))?.len();
    if size < have {
        return Err(fail(
            name,
            "resize",
            format!(
                "the file asks for {size} bytes but the disk holds {have}; shrinking a private \
                 disk is refused (it could lose data): keep the size, or `berth disk rm` it"
            ),
        ));
    }
    if size > have {
        grow(name, &img, size)?;
        if let Some(mut st) = state(root, name) {
            st.size = size;
            write_state(root, &st)?;
        }
    }
    attach(name, &img)
}

fn create(
    root: &Path,
    name: &str,
    project: &str,
    size: u64,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), DiskError> {
    let dir = disks_dir(root).join(name);
    fs::create_dir_all(&dir).map_err(|e| fail(name, "create", e))?;
    make_ext4(name, &image(root, name), size)?;
    record(root, name, project, size, labels)
}

/// Writes `disk.json` for a disk made now.
fn record(
    root: &Path,
    name: &str,
    project: &str,
    size: u64,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), DiskError> {
    write_state(
        root,
        &DiskState {
            name: name.to_string(),
            project: project.to_string(),
            size,
            labels: labels.clone(),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        },
    )
}

/// Makes `img`: a sparse file of `size` bytes holding an empty ext4 file system.
pub fn make_ext4(name: &str, img: &Path, size: u64) -> Result<(), DiskError> {
    let tmp = img.with_extension("new");
    let f = fs::File::create(&tmp).map_err(|e| fail(name, "create", e))?;
    // Sparse: the host spends blocks only for what is written.
    f.set_len(size).map_err(|e| fail(name, "create", e))?;
    drop(f);
    // No blocks reserved for root: the disk's size is what the service gets. Lazy init keeps
    // mkfs quick on a large disk.
    run(
        name,
        "make the file system",
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(&tmp),
    )?;
    fs::rename(&tmp, img).map_err(|e| fail(name, "create", e))
}

fn grow(name: &str, img: &Path, size: u64) -> Result<(), DiskError> {
    fs::OpenOptions::new()
        .write(true)
        .open(img)
        .and_then(|f| f.set_len(size))
        .map_err(|e| fail(name, "grow", e))?;
    // resize2fs wants a checked file system when it is not mounted.
    run(
        name,
        "check before growing",
        Command::new("e2fsck").args(["-f", "-y"]).arg(img),
    )?;
    run(
        name,
        "grow the file system",
        Command::new("resize2fs").arg("-f").arg(img),
    )
}

/// Attaches `img` to a free loop device with autoclear; the device goes when its last user
/// (the descriptor returned, then the container's mount) lets it go.
pub fn attach(name: &str, img: &Path) -> Result<(PathBuf, OwnedFd), DiskError> {
    let open_ctl = || {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
    };
    let ctl = match open_ctl() {
        // The loop module is not loaded yet (a host where udev has not loaded it, a fresh VM):
        // load it, as losetup's users would, and say how when that fails.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let loaded = Command::new("modprobe")
                .arg("loop")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            open_ctl().map_err(|e| {
                fail(
                    name,
                    "open /dev/loop-control",
                    if loaded {
                        e.to_string()
                    } else {
                        format!(
                            "{e}: the kernel's loop driver is not loaded, and `modprobe loop` \
                             failed (private disks and size limits need it)"
                        )
                    },
                )
            })?
        }
        r => r.map_err(|e| fail(name, "open /dev/loop-control", e))?,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .map_err(|e| fail(name, "open image", e))?;
    // Another process may take the free device first: ask again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(fail(
                name,
                "find a free loop device",
                std::io::Error::last_os_error(),
            ));
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let lo = match fs::OpenOptions::new().read(true).write(true).open(&dev) {
            Ok(f) => f,
            Err(e) => return Err(fail(name, "open loop device", e)),
        };
        let mut cfg = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            // SAFETY: an all-zero loop_info64 is its documented "nothing set" value.
            info: unsafe { std::mem::zeroed() },
            reserved: [0; 8],
        };
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` from the pointer, which is valid
        // for the call; the image descriptor in it is open.
        let r = unsafe { libc::ioctl(lo.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r == 0 {
            return Ok((dev, lo.into()));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(fail(name, "attach loop device", e));
        }
    }
    Err(fail(
        name,
        "attach loop device",
        "every free device was taken meanwhile",
    ))
}

/// Takes in the disk image `img` (a project import staged it) as disk `name` of `project`,
/// moving it into `<root>/disks/<name>/`, whose directory exists and is empty.
pub fn adopt(
    root: &Path,
    name: &str,
    project: &str,
    img: &Path,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), DiskError> {
    let size = fs::metadata(img).map_err(|e| fail(name, "stat", e))?.len();
    fs::rename(img, image(root, name)).map_err(|e| fail(name, "move in", e))?;
    record(root, name, project, size, labels)
}

/// The image file of disk `name`.
pub fn image_path(root: &Path, name: &str) -> PathBuf {
    image(root, name)
}

fn write_state(root: &Path, st: &DiskState) -> Result<(), DiskError> {
    let text = serde_json::to_vec_pretty(st).map_err(|e| fail(&st.name, "record", e))?;
    fs::write(disks_dir(root).join(&st.name).join("disk.json"), text)
        .map_err(|e| fail(&st.name, "record", e))
}

pub fn state(root: &Path, name: &str) -> Option<DiskState> {
    let t = fs::read_to_string(disks_dir(root).join(name).join("disk.json")).ok()?;
    serde_json::from_str(&t).ok()
}

/// A disk as `berth disk ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub name: String,
    pub project: String,
    pub size: u64,
    /// Bytes the image takes on the host (it is sparse).
    pub on_host: u64,
    /// The loop device while a container has it.
    pub attached: Option<String>,
}

pub fn list(root: &Path) -> Vec<Listed> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(disks_dir(root)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(st) = state(root, &name) else {
                continue;
            };
            let img = image(root, &name);
            out.push(Listed {
                on_host: fs::metadata(&img).map_or(0, |m| m.blocks() * 512),
                attached: attached(&img),
                name,
                project: st.project,
                size: st.size,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Removes disk `name` with its data; refused while a container has it.
pub fn remove(root: &Path, name: &str) -> Result<(), DiskError> {
    let img = image(root, name);
    let until = Instant::now() + Duration::from_secs(3);
    while let Some(dev) = attached(&img) {
        if Instant::now() >= until {
            return Err(fail(
                name,
                "remove",
                format!("it is in use ({dev}); stop its container first"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::remove_dir_all(disks_dir(root).join(name)).map_err(|e| fail(name, "remove", e))
}

/// Removes the private disks `project` made (`down -v`). Returns their names.
pub fn remove_project(root: &Path, project: &str) -> Result<Vec<String>, DiskError> {
    let mut gone = Vec::new();
    for d in list(root).into_iter().filter(|d| d.project == project) {
        remove(root, &d.name)?;
        gone.push(d.name);
    }
    Ok(gone)
}

/// Refuses, before anything changes, a file that shrinks one of its private disks.
pub fn check_sizes(root: &Path, project: &crate::spec::model::Project) -> Result<(), DiskError> {
    for (key, def) in &project.disks {
        if def.kind != crate::spec::model::DiskKind::Private {
            continue;
        }
        let name = def
            .name
            .clone()
            .unwrap_or_else(|| format!("{}_{key}", project.name));
        if let (Some(st), Some(want)) = (state(root, &name), def.size)
            && want < st.size
        {
            return Err(fail(
                &name,
                "resize",
                format!(
                    "disks.{key}.size asks for {} but the disk holds {}; shrinking a private \
                     disk is refused (it could lose data): keep the size, or remove the disk \
                     with `berth disk rm {name}`",
                    crate::support::human_size(want),
                    crate::support::human_size(st.size)
                ),
            ));
        }
    }
    Ok(())
}
