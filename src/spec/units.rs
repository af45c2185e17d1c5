//! Sizes (`512m`), durations (`1m30s`) and rates (`10mbit`), read the way Compose and tc read them.

use std::fmt;

/// Parses a size like `1024`, `512m`, `1g`, `1.5GiB`, `100 kb` into bytes. Units are binary
/// (k = 1024), as Docker reads `mem_limit`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    if num.is_empty() {
        return Err(format!("expected a size like 512m or 1g, found `{s}`"));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("expected a size like 512m or 1g, found `{s}`"))?;
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        "p" | "pb" | "pib" => 1 << 50,
        _ => {
            return Err(format!(
                "expected a size like 512m or 1g (units b, k, m, g, t, p), found `{s}`"
            ));
        }
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("size `{s}` is too large"));
    }
    Ok(bytes.round() as u64)
}

/// A duration, printed the way Go (and so Compose) prints one: `1m30s`, `500ms`, `0s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub u64 /* nanoseconds */);

impl Duration {
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if ns == 0 {
            return write!(f, "0s");
        }
        if ns < 1_000 {
            return write!(f, "{ns}ns");
        }
        if ns < 1_000_000 {
            return write!(f, "{}", trim_float(ns as f64 / 1e3, "µs"));
        }
        if ns < 1_000_000_000 {
            return write!(f, "{}", trim_float(ns as f64 / 1e6, "ms"));
        }
        let h = ns / 3_600_000_000_000;
        let m = (ns / 60_000_000_000) % 60;
        let rem = ns % 60_000_000_000;
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&trim_float(rem as f64 / 1e9, "s"));
        write!(f, "{out}")
    }
}

fn trim_float(v: f64, unit: &str) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{unit}")
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a Go-style duration: `1h30m`, `10s`, `1.5s`, `500ms`, `0`, and `d` for days.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration like 30s, 1m30s or 500ms, found `{s}`");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration(0));
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if n_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            _ => return Err(bad()),
        };
        total += n * mult;
        rest = &rest[u_end..];
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(format!("duration `{s}` is too long"));
    }
    Ok(Duration(total.round() as u64))
}

/// Parses a rate into bits per second. Units as tc reads them: `bit`, `kbit`, `mbit`, `gbit`,
/// `tbit` (decimal bits), `kibit`, `mibit`, `gibit`, `tibit` (binary bits), and `bps`, `kbps`,
/// `mbps`, `gbps`, `tbps` (BYTES per second, decimal).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad =
        || format!("expected a rate like 10mbit, 512kbit or 1gbit (bits per second), found `{s}`");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "kibit" => 1024.0,
        "mibit" => 1024.0 * 1024.0,
        "gibit" => 1024.0 * 1024.0 * 1024.0,
        "tibit" => 1024.0f64.powi(4),
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        "tbps" => 8e12,
        _ => return Err(bad()),
    };
    let v = n * mult;
    if !v.is_finite() || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("100 kb").unwrap(), 102_400);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-5m").is_err());
        assert!(parse_size("5x").is_err());
    }

    #[test]
    fn durations_round_trip_like_go() {
        for (s, out) in [
            ("1m30s", "1m30s"),
            ("90s", "1m30s"),
            ("500ms", "500ms"),
            ("1.5s", "1.5s"),
            ("0", "0s"),
            ("1h", "1h0m0s"),
            ("2h45m", "2h45m0s"),
            ("10us", "10µs"),
            ("1d", "24h0m0s"),
        ] {
            let d = parse_duration(s).unwrap();
            assert_eq!(d.to_string(), out, "{s}");
            assert_eq!(parse_duration(&d.to_string()).unwrap(), d);
        }
        for bad in ["10x", "soon", "", "s", "10", "1m30"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10mbit").unwrap(), 10_000_000);
        assert_eq!(parse_rate("1mbps").unwrap(), 8_000_000);
        assert_eq!(parse_rate("1kibit").unwrap(), 1024);
        assert_eq!(parse_rate("2500").unwrap(), 2500);
        assert!(parse_rate("fast").is_err());
    }
}
