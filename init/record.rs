//! One log record in Docker's json-file format, with nothing but `core`: shared by berth-init
//! (which writes the records from its no_std binary) and berth itself (its fallback init's log
//! writer and every timestamp berth prints), so that the format exists once.
//!
//! `{"log":"<text>","stream":"stdout","time":"2026-12-04T05:00:00.123456789Z"}` and a newline,
//! the text escaped as serde_json escapes it, invalid UTF-8 replaced by U+FFFD (as
//! `String::from_utf8_lossy` does).

/// The largest record `format` can make from a line of `len` bytes.
pub const fn max_len(len: usize) -> usize {
    // Every byte escaped as \u00XX at worst, plus the fixed parts (under 80 bytes).
    len * 6 + 96
}

/// A cursor over an output buffer that is large enough (callers size it with `max_len`).
struct Out<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Out<'_> {
    fn byte(&mut self, b: u8) {
        if self.at < self.buf.len() {
            self.buf[self.at] = b;
            self.at += 1;
        }
    }

    fn bytes(&mut self, s: &[u8]) {
        for b in s {
            self.byte(*b);
        }
    }

    fn digits(&mut self, v: u64, width: usize) {
        let mut d = [0u8; 20];
        let text = decimal(&mut d, v);
        for _ in text.len()..width {
            self.byte(b'0');
        }
        self.bytes(text);
    }
}

/// `v` in decimal, written at the end of `buf`; returns the digits.
pub fn decimal(buf: &mut [u8; 20], v: u64) -> &[u8] {
    let mut n = v;
    let mut i = buf.len();
    while n > 0 || i == buf.len() {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    &buf[i..]
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn escape(o: &mut Out<'_>, text: &[u8]) {
    for chunk in text.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => o.bytes(b"\\\""),
                b'\\' => o.bytes(b"\\\\"),
                b'\n' => o.bytes(b"\\n"),
                b'\r' => o.bytes(b"\\r"),
                b'\t' => o.bytes(b"\\t"),
                0x08 => o.bytes(b"\\b"),
                0x0c => o.bytes(b"\\f"),
                0..=0x1f => {
                    o.bytes(b"\\u00");
                    o.byte(HEX[usize::from(b >> 4)]);
                    o.byte(HEX[usize::from(b & 0xf)]);
                }
                _ => o.byte(b),
            }
        }
        if !chunk.invalid().is_empty() {
            o.bytes("\u{FFFD}".as_bytes());
        }
    }
}

/// The length of an RFC 3339 time as `time_into` writes it.
pub const TIME_LEN: usize = 30;

/// Writes an RFC 3339 UTC time with nanoseconds (`2026-12-04T05:00:00.123456789Z`) for
/// `secs.nanos` since the epoch into `buf` (`TIME_LEN` bytes); returns the length written.
pub fn time_into(buf: &mut [u8], secs: i64, nanos: u32) -> usize {
    let mut o = Out { buf, at: 0 };
    time(&mut o, secs, nanos);
    o.at
}

fn time(o: &mut Out<'_>, secs: i64, nanos: u32) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    o.digits(year.max(0) as u64, 4);
    o.byte(b'-');
    o.digits(month as u64, 2);
    o.byte(b'-');
    o.digits(day as u64, 2);
    o.byte(b'T');
    o.digits((rem / 3600) as u64, 2);
    o.byte(b':');
    o.digits(((rem / 60) % 60) as u64, 2);
    o.byte(b':');
    o.digits((rem % 60) as u64, 2);
    o.byte(b'.');
    o.digits(u64::from(nanos), 9);
    o.byte(b'Z');
}

/// Formats one record into `buf` (at least `max_len(line.len())` bytes); returns its length.
pub fn format(buf: &mut [u8], line: &[u8], stderr: bool, secs: i64, nanos: u32) -> usize {
    let mut o = Out { buf, at: 0 };
    o.bytes(b"{\"log\":\"");
    escape(&mut o, line);
    o.bytes(b"\",\"stream\":\"");
    o.bytes(if stderr { b"stderr" } else { b"stdout" });
    o.bytes(b"\",\"time\":\"");
    time(&mut o, secs, nanos);
    o.bytes(b"\"}\n");
    o.at
}
