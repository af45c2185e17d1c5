//! Container logs, written by the container's own init: no log process per container.
//!
//! The service's stdout and stderr are pipes that init reads; each line becomes one JSON record
//! in Docker's json-file format (`{"log":"text\n","stream":"stdout","time":"..."}`), so the log
//! is readable while the container runs and after it exits, and tools that read Docker's logs
//! read berth's. The file rotates at `max_size` keeping `max_files` files, through a directory
//! descriptor opened before pivot_root (the host path is not reachable afterwards).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::SetupError;

pub use crate::runtime::lower::config::LogSpec;

pub use crate::runtime::LOG_FILE;

/// The record format, shared with berth-init (a `no_std` program built by build.rs).
use crate::sys::record;

pub use crate::sys::timestamp;

/// The writer init uses: one file, rotated by size.
pub struct Writer {
    dir: OwnedFd,
    file: File,
    size: u64,
    spec: LogSpec,
    partial: [Vec<u8>; 2],
}

fn name_at(i: u32) -> String {
    if i == 0 {
        LOG_FILE.to_string()
    } else {
        format!("{LOG_FILE}.{i}")
    }
}

impl Writer {
    /// Opens `<dir>/container.log` for appending, before the container's root replaces the
    /// host's paths.
    pub fn open(dir: &std::path::Path, spec: LogSpec) -> Result<Writer, SetupError> {
        let d = rustix::fs::open(
            dir,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| {
            SetupError::sys(
                "open log directory",
                Some(&dir.to_string_lossy()),
                nix::errno::Errno::from_raw(e.raw_os_error()),
            )
        })?;
        let file = Self::open_file(&d)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Writer {
            dir: d,
            file,
            size,
            spec,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// The log's directory and file, the file's size and the rotation policy: what berth-init
    /// takes over.
    pub fn parts(
        &self,
    ) -> (
        std::os::fd::BorrowedFd<'_>,
        std::os::fd::BorrowedFd<'_>,
        u64,
        LogSpec,
    ) {
        (self.dir.as_fd(), self.file.as_fd(), self.size, self.spec)
    }

    fn open_file(dir: &OwnedFd) -> Result<File, SetupError> {
        let fd = rustix::fs::openat(
            dir.as_fd(),
            LOG_FILE,
            rustix::fs::OFlags::WRONLY
                | rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::APPEND
                | rustix::fs::OFlags::CLOEXEC
                | rustix::fs::OFlags::NOFOLLOW,
            rustix::fs::Mode::from_raw_mode(0o640),
        )
        .map_err(|e| {
            SetupError::sys(
                "open log",
                Some(LOG_FILE),
                nix::errno::Errno::from_raw(e.raw_os_error()),
            )
        })?;
        Ok(File::from(fd))
    }

    fn rotate(&mut self) {
        if self.spec.max_files <= 1 {
            let _ = self.file.set_len(0);
            self.size = 0;
            return;
        }
        for i in (0..self.spec.max_files - 1).rev() {
            let _ = rustix::fs::renameat(
                self.dir.as_fd(),
                name_at(i),
                self.dir.as_fd(),
                name_at(i + 1),
            );
        }
        if let Ok(f) = Self::open_file(&self.dir) {
            self.file = f;
            self.size = 0;
        }
    }

    fn record(&mut self, stream: usize, line: &[u8]) {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut bytes = vec![0u8; record::max_len(line.len())];
        let n = record::format(
            &mut bytes,
            line,
            stream != 0,
            d.as_secs() as i64,
            d.subsec_nanos(),
        );
        bytes.truncate(n);
        if self.size > 0 && self.size + bytes.len() as u64 > self.spec.max_size {
            self.rotate();
        }
        if self.file.write_all(&bytes).is_ok() {
            self.size += bytes.len() as u64;
        }
    }

    /// Takes bytes read from a stream; writes a record per complete line. Very long lines are
    /// split at 16 KiB, as Docker does.
    pub fn feed(&mut self, stream: usize, data: &[u8]) {
        let mut buf = std::mem::take(&mut self.partial[stream]);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + nl + 1;
            self.record(stream, &buf[start..end]);
            start = end;
        }
        let mut rest = buf.split_off(start);
        while rest.len() >= 16 * 1024 {
            let tail = rest.split_off(16 * 1024);
            self.record(stream, &rest);
            rest = tail;
        }
        self.partial[stream] = rest;
    }

    /// Writes what is left of unfinished lines (at exit).
    pub fn flush(&mut self) {
        for s in 0..2 {
            let rest = std::mem::take(&mut self.partial[s]);
            if !rest.is_empty() {
                self.record(s, &rest);
            }
        }
    }
}

/// The pipes carrying the service's stdout and stderr to init.
pub struct Pipes {
    pub read: [OwnedFd; 2],
    pub write: [OwnedFd; 2],
}

pub fn pipes() -> Result<Pipes, SetupError> {
    let mk = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| SetupError::sys("create log pipe", None, e))
    };
    let (r1, w1) = mk()?;
    let (r2, w2) = mk()?;
    for r in [&r1, &r2] {
        let flags = nix::fcntl::fcntl(r, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| SetupError::sys("log pipe flags", None, e))?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(r, nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(|e| SetupError::sys("log pipe flags", None, e))?;
    }
    Ok(Pipes {
        read: [r1, r2],
        write: [w1, w2],
    })
}

/// Reads whatever is available on a non-blocking pipe into the writer; false at end of file.
pub fn pump(fd: &OwnedFd, stream: usize, w: &mut Writer) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return false,
            Ok(n) => w.feed(stream, &buf[..n]),
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::new(1_764_086_400, 5);
        assert_eq!(timestamp(t), "2025-11-25T16:00:00.000000005Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(timestamp(leap).starts_with("2000-02-29T"));
    }

    #[test]
    fn records_match_serde_json() {
        // berth-init writes these records without serde: they must read back exactly as
        // serde_json would have written them (escapes, invalid UTF-8, the time).
        let lines: [&[u8]; 6] = [
            b"plain text\n",
            b"quote \" backslash \\ tab \t cr \r\n",
            b"\x00\x01\x08\x0c\x1f\x7f controls",
            "unicode \u{e9}\u{1F600}\u{2028}".as_bytes(),
            b"bad \xff\xfe utf-8 \xe2\x82",
            b"",
        ];
        for (i, line) in lines.iter().enumerate() {
            #[derive(Serialize)]
            struct Rec<'a> {
                log: &'a str,
                stream: &'a str,
                time: String,
            }
            let secs = 1_764_086_400 + i as i64 * 40_000_000;
            let nanos = 123_456_789 * i as u32 % 1_000_000_000;
            let t = UNIX_EPOCH + Duration::new(secs as u64, nanos);
            let text = String::from_utf8_lossy(line);
            let want = serde_json::to_string(&Rec {
                log: &text,
                stream: if i % 2 == 0 { "stdout" } else { "stderr" },
                time: timestamp(t),
            })
            .unwrap()
                + "\n";
            let mut buf = vec![0u8; record::max_len(line.len())];
            let n = record::format(&mut buf, line, i % 2 == 1, secs, nanos);
            assert_eq!(String::from_utf8_lossy(&buf[..n]), want, "line {i}");
        }
    }

    #[test]
    fn lines_records_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Writer::open(
            d.path(),
            LogSpec {
                max_size: 1000,
                max_files: 2,
            },
        )
        .unwrap();
        w.feed(0, b"hello\nwor");
        w.feed(0, b"ld\n");
        w.feed(1, b"oops\n");
        let text = std::fs::read_to_string(d.path().join(LOG_FILE)).unwrap();
        let recs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs[0]["log"], "hello\n");
        assert_eq!(recs[1]["log"], "world\n");
        assert_eq!(recs[2]["stream"], "stderr");
        for _ in 0..40 {
            w.feed(0, b"0123456789012345678901234567890123456789\n");
        }
        assert!(d.path().join("container.log.1").exists());
        assert!(!d.path().join("container.log.2").exists());
        assert!(std::fs::metadata(d.path().join(LOG_FILE)).unwrap().len() <= 1000);
    }
}
