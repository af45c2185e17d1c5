//! The persistent address book of berth's networks: one JSON file per network under
//! `<root>/networks/`, holding its bridge, subnet and the address of every container on it.
//! An address is leased when a container first starts and kept until it is removed, so it is
//! stable across restarts. The DNS server answers from these files.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Attachment, NetError, Subnet, step};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetState {
    pub name: String,
    pub project: String,
    pub bridge: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    /// The IPv6 subnet and gateway of an `enable_ipv6` network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<super::Subnet6>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<std::net::Ipv6Addr>,
    #[serde(default)]
    pub leases: BTreeMap<String, Lease>,
    /// Being taken down by `berth down` (`net::retire`): nothing may join it any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retiring: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<std::net::Ipv6Addr>,
    pub project: String,
    pub service: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub hostname: String,
    /// The host side of the container's veth on this network.
    pub veth: String,
}

pub fn dir(root: &Path) -> PathBuf {
    root.join("networks")
}

fn file(root: &Path, name: &str) -> PathBuf {
    dir(root).join(format!("{name}.json"))
}

pub fn read(root: &Path, name: &str) -> Option<NetState> {
    let text = fs::read_to_string(file(root, name)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write(root: &Path, st: &NetState) -> Result<(), NetError> {
    let d = dir(root);
    fs::create_dir_all(&d).map_err(|e| step(&st.name, "create networks directory", e))?;
    let text = serde_json::to_vec_pretty(st).map_err(|e| step(&st.name, "encode", e))?;
    crate::sys::atomic_write(&file(root, &st.name), &text)
        .map_err(|e| step(&st.name, "write state", e))
}

pub fn remove(root: &Path, name: &str) {
    let _ = fs::remove_file(file(root, name));
}

/// Every network recorded under `root`.
pub fn all(root: &Path) -> Vec<NetState> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir(root)) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = n.strip_suffix(".json")
                && !n.starts_with('.')
                && let Some(st) = read(root, name)
            {
                out.push(st);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A lock held while networks are created, leased from or removed. Subnets are chosen
/// against every berth on the host (other state roots too), so the lock is host-wide.
pub struct Lock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

pub fn lock() -> Result<Lock, NetError> {
    let d = Path::new("/run/lock");
    let path = if d.is_dir() {
        d.join("berth-net.lock")
    } else {
        std::env::temp_dir().join("berth-net.lock")
    };
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| step("-", "open the network lock", e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map(Lock)
        .map_err(|(_, e)| step("-", "lock the networks", e))
}

/// A range new networks take their subnets from: `base` cut into subnets of prefix `size`
/// (Docker's `default-address-pools`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub base: Subnet,
    pub size: u8,
}

/// The default: /22 networks (1,022 addresses each) from 10.213.0.0/16, 64 of them.
pub const DEFAULT_POOL: Pool = Pool {
    base: Subnet {
        addr: Ipv4Addr::new(10, 213, 0, 0),
        prefix: 16,
    },
    size: 22,
};

/// The pools of the configuration file's `default-address-pools`
/// (`[{"base": "10.213.0.0/16", "size": 22}]`), else `DEFAULT_POOL`. An entry that does not
/// read is said and skipped.
pub fn pools() -> Vec<Pool> {
    let config = crate::sys::config();
    let Some(list) = config
        .get("default-address-pools")
        .and_then(|v| v.as_array())
    else {
        return vec![DEFAULT_POOL];
    };
    let mut out = Vec::new();
    for p in list {
        let base = p.get("base").and_then(|b| b.as_str()).map(Subnet::parse);
        let size = p.get("size").and_then(|s| s.as_u64());
        match (base, size) {
            (Some(Ok(base)), Some(size)) if (u64::from(base.prefix)..=30).contains(&size) => out
                .push(Pool {
                    base,
                    size: size as u8,
                }),
            _ => tracing::warn!(
                "{}: default-address-pools: `{p}` is not {{\"base\": \"A.B.C.D/N\", \"size\": M}} with N <= M <= 30; skipped",
                crate::sys::config_path().display()
            ),
        }
    }
    if out.is_empty() {
        out.push(DEFAULT_POOL);
    }
    out
}

/// The subnet of a new network: the file's, or the first subnet of the pools that overlaps
/// neither a route of the host (`routes`) nor another berth network.
pub fn pick_subnet(
    att: &Attachment,
    routes: &[Subnet],
    taken: &[Subnet],
    pools: &[Pool],
) -> Result<Subnet, NetError> {
    if let Some(s) = att.subnet {
        if let Some(r) = routes.iter().chain(taken).find(|r| r.overlaps(&s)) {
            return Err(NetError::Overlap {
                network: att.network.clone(),
                subnet: s.to_string(),
                route: r.to_string(),
            });
        }
        return Ok(s);
    }
    for pool in pools {
        let step = 1u32 << (32 - u32::from(pool.size));
        let count = 1u32 << (pool.size - pool.base.prefix);
        let first = u32::from(pool.base.addr) & pool.base.mask();
        for i in 0..count {
            let s = Subnet {
                addr: Ipv4Addr::from(first + i * step),
                prefix: pool.size,
            };
            if !routes.iter().chain(taken).any(|r| r.overlaps(&s)) {
                return Ok(s);
            }
        }
    }
    Err(NetError::NoSubnet {
        network: att.network.clone(),
        pools: pools
            .iter()
            .map(|p| format!("{} in /{}s", p.base, p.size))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The address of `container` on `st`: the one it already has, the one the file asks for, or
/// the lowest free one.
pub fn lease_address(
    st: &NetState,
    container: &str,
    wanted: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, NetError> {
    if let Some(l) = st.leases.get(container)
        && wanted.is_none_or(|w| w == l.ip)
    {
        return Ok(l.ip);
    }
    let used = |ip: Ipv4Addr| {
        ip == st.gateway || st.leases.iter().any(|(n, l)| n != container && l.ip == ip)
    };
    if let Some(w) = wanted {
        let why = if !st.subnet.contains(w) {
            Some(format!("outside the subnet {}", st.subnet))
        } else if w == st.subnet.host(0) || w == st.subnet.host(st.subnet.hosts() + 1) {
            Some("the subnet's network or broadcast address".to_string())
        } else if used(w) {
            Some("already in use".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(NetError::Address {
                network: st.name.clone(),
                address: w,
                why,
            });
        }
        return Ok(w);
    }
    (1..=st.subnet.hosts())
        .map(|n| st.subnet.host(n))
        .find(|ip| !used(*ip))
        .ok_or_else(|| NetError::Full {
            network: st.name.clone(),
            subnet: st.subnet.to_string(),
        })
}

/// The IPv6 address of `container` on an IPv6 network: the one it has, the file's, or the
/// host part of its IPv4 address in the IPv6 subnet (so the two are easy to match up), or
/// else the first free one.
pub fn lease_address6(
    st: &NetState,
    container: &str,
    ip4: Ipv4Addr,
    wanted: Option<std::net::Ipv6Addr>,
) -> Result<Option<std::net::Ipv6Addr>, NetError> {
    let Some(net6) = st.subnet6 else {
        return Ok(None);
    };
    if let Some(ip6) = st.leases.get(container).and_then(|l| l.ip6)
        && wanted.is_none_or(|w| w == ip6)
    {
        return Ok(Some(ip6));
    }
    let used = |ip: std::net::Ipv6Addr| {
        Some(ip) == st.gateway6
            || ip == net6.host(0)
            || st
                .leases
                .iter()
                .any(|(n, l)| n != container && l.ip6 == Some(ip))
    };
    if let Some(w) = wanted {
        let why = if !net6.contains(w) {
            Some(format!("outside the subnet {net6}"))
        } else if used(w) {
            Some("already in use".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(NetError::Invalid(format!(
                "network {}: address {w} is {why}",
                st.name
            )));
        }
        return Ok(Some(w));
    }
    let index = u128::from(u32::from(ip4) - st.subnet.network());
    let first = net6.host(index);
    if !used(first) {
        return Ok(Some(first));
    }
    (2..=u128::from(u16::MAX))
        .map(|n| net6.host(n))
        .find(|ip| !used(*ip))
        .map(Some)
        .ok_or_else(|| NetError::Full {
            network: st.name.clone(),
            subnet: net6.to_string(),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn st() -> NetState {
        NetState {
            name: "p_default".into(),
            project: "p".into(),
            bridge: "btx".into(),
            subnet: Subnet::parse("10.0.0.0/29").unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            internal: false,
            subnet6: None,
            gateway6: None,
            leases: BTreeMap::new(),
            retiring: false,
        }
    }

    fn lease(ip: &str) -> Lease {
        Lease {
            ip: ip.parse().unwrap(),
            ip6: None,
            project: "p".into(),
            service: "s".into(),
            aliases: vec![],
            hostname: String::new(),
            veth: String::new(),
        }
    }

    #[test]
    fn addresses_are_stable_unique_and_bounded() {
        let mut s = st();
        assert_eq!(
            lease_address(&s, "a", None).unwrap().to_string(),
            "10.0.0.2"
        );
        s.leases.insert("a".into(), lease("10.0.0.2"));
        assert_eq!(
            lease_address(&s, "a", None).unwrap().to_string(),
            "10.0.0.2"
        );
        assert_eq!(
            lease_address(&s, "b", None).unwrap().to_string(),
            "10.0.0.3"
        );
        let w = "10.0.0.2".parse().unwrap();
        assert!(matches!(
            lease_address(&s, "b", Some(w)),
            Err(NetError::Address { .. })
        ));
        let out = "10.0.1.2".parse().unwrap();
        assert!(
            lease_address(&s, "b", Some(out))
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
        for (i, n) in ["b", "c", "d", "e"].iter().enumerate() {
            s.leases
                .insert(n.to_string(), lease(&format!("10.0.0.{}", i + 3)));
        }
        assert!(matches!(
            lease_address(&s, "f", None),
            Err(NetError::Full { .. })
        ));
    }

    #[test]
    fn subnets_avoid_routes_and_other_networks() {
        let att = Attachment {
            network: "n".into(),
            ..Default::default()
        };
        let routes = [Subnet::parse("10.213.0.0/23").unwrap()];
        let taken = [Subnet::parse("10.213.4.0/24").unwrap()];
        // The default: /22s, the first clear of the route and the other network.
        assert_eq!(
            pick_subnet(&att, &routes, &taken, &[DEFAULT_POOL])
                .unwrap()
                .to_string(),
            "10.213.8.0/22"
        );
        assert!(
            pick_subnet(&att, &routes, &taken, &[DEFAULT_POOL])
                .unwrap()
                .hosts()
                >= 1000
        );
        let small = Pool {
            base: Subnet::parse("10.213.0.0/16").unwrap(),
            size: 24,
        };
        assert_eq!(
            pick_subnet(&att, &routes, &taken, &[small])
                .unwrap()
                .to_string(),
            "10.213.2.0/24"
        );
        // A pool with nothing free: the next one; none: the error names them.
        let full = Pool {
            base: Subnet::parse("10.213.0.0/23").unwrap(),
            size: 24,
        };
        assert_eq!(
            pick_subnet(&att, &routes, &taken, &[full, small])
                .unwrap()
                .to_string(),
            "10.213.2.0/24"
        );
        let e = pick_subnet(&att, &routes, &taken, &[full])
            .unwrap_err()
            .to_string();
        assert!(e.contains("10.213.0.0/23 in /24s"), "{e}");
        let fixed = Attachment {
            subnet: Some(Subnet::parse("10.213.1.0/24").unwrap()),
            ..att
        };
        assert!(matches!(
            pick_subnet(&fixed, &routes, &taken, &[DEFAULT_POOL]),
            Err(NetError::Overlap { .. })
        ));
    }

    #[test]
    fn ipv6_addresses_follow_the_ipv4_ones_and_stay() {
        let mut s = st();
        let net6 = super::super::Subnet6::parse("fd00:1:2::/64").unwrap();
        assert_eq!(
            lease_address6(&s, "a", "10.0.0.2".parse().unwrap(), None).unwrap(),
            None
        );
        s.subnet6 = Some(net6);
        s.gateway6 = Some(net6.host(1));
        let a = lease_address6(&s, "a", "10.0.0.2".parse().unwrap(), None).unwrap();
        assert_eq!(a, Some("fd00:1:2::2".parse().unwrap()));
        let mut l = lease("10.0.0.2");
        l.ip6 = a;
        s.leases.insert("a".into(), l);
        // Kept; the gateway's and a taken address are refused when asked for.
        assert_eq!(
            lease_address6(&s, "a", "10.0.0.2".parse().unwrap(), None).unwrap(),
            a
        );
        assert!(lease_address6(&s, "b", "10.0.0.3".parse().unwrap(), a).is_err());
        assert!(lease_address6(&s, "b", "10.0.0.3".parse().unwrap(), s.gateway6).is_err());
        // An IPv4 host part that maps onto a taken address falls back to a free one.
        let b = lease_address6(&s, "b", "10.0.0.2".parse().unwrap(), None).unwrap();
        assert_ne!(b, a);
        assert!(b.is_some_and(|b| net6.contains(b)));
        assert!(super::super::Subnet6::parse("fd00:1:2::1/64").is_err());
        assert!(super::super::Subnet6::ula(&["r", "n"]).addr.segments()[0] >> 8 == 0xfd);
    }
}
