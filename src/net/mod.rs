//! Project networks: bridges, veth pairs, addresses (a persistent IPAM under the state root),
//! service names (an embedded DNS server in the supervisor), published ports (a proxy in the
//! supervisor) and bandwidth limits (tc qdiscs).
//!
//! What a container joins is decided here from the project file (`attachments`, pure); the
//! kernel work is in `link` (netlink) and `nft` (the isolation and masquerade rules).

pub mod dns;
pub mod ipam;
pub mod link;
pub mod nft;
pub mod ports;

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::spec::model::{Project, Service};
use ipam::NetState;

/// One piece of work in flight (a proxied connection, a forwarded DNS query), counted in a
/// shared counter until dropped, whether its task ends or is aborted: the supervisor does not
/// go idle while the count is not zero.
pub struct InFlight(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    pub fn start(count: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> InFlight {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network {network}: {step}: {message}")]
    Step {
        network: String,
        step: &'static str,
        message: String,
    },
    #[error(
        "network {network}: no free subnet left in the address pools ({pools}): every one \
         overlaps a route of this host or another berth network; give the network an ipam \
         subnet, or more pools under default-address-pools in berth's config file"
    )]
    NoSubnet { network: String, pools: String },
    #[error(
        "network {network}: subnet {subnet} overlaps a route of this host ({route}); choose \
         another under ipam.config"
    )]
    Overlap {
        network: String,
        subnet: String,
        route: String,
    },
    #[error("network {network}: address {address} is {why}")]
    Address {
        network: String,
        address: Ipv4Addr,
        why: String,
    },
    #[error("network {network}: subnet {subnet} is full")]
    Full { network: String, subnet: String },
    #[error(
        "network {0} is declared `external: true` but does not exist; create it with the \
         project that defines it (berth up there) first"
    )]
    ExternalMissing(String),
    #[error("{0}")]
    Invalid(String),
}

fn step(network: &str, step: &'static str, e: impl std::fmt::Display) -> NetError {
    NetError::Step {
        network: network.to_string(),
        step,
        message: e.to_string(),
    }
}

/// An IPv4 subnet: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("expected a subnet like 10.1.2.0/24, found `{s}`"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address (IPv6 subnets: not yet)"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("prefix `{p}` must be between 8 and 30"))?;
        let net = Subnet { addr, prefix };
        if net.network() != u32::from(addr) {
            return Err(format!(
                "`{s}` has host bits set (the network is {}/{prefix})",
                Ipv4Addr::from(net.network())
            ));
        }
        Ok(net)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    pub fn network(&self) -> u32 {
        u32::from(self.addr) & self.mask()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.network()
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        let m = self.mask() & other.mask();
        self.network() & m == other.network() & m
    }

    /// The n-th address of the subnet (1 is the first host).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.network() + n)
    }

    /// Host addresses: network + 1 ..= broadcast - 1.
    pub fn hosts(&self) -> u32 {
        (1u32 << (32 - u32::from(self.prefix))) - 2
    }
}

/// An IPv6 subnet of a network (`enable_ipv6`): a /64 unless the file gives another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet6 {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Subnet6 {
    pub fn parse(s: &str) -> Result<Subnet6, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("expected a subnet like fd00:1:2::/64, found `{s}`"))?;
        let addr: Ipv6Addr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv6 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (16..=120).contains(p))
            .ok_or_else(|| format!("prefix `{p}` must be between 16 and 120"))?;
        let net = Subnet6 { addr, prefix };
        if u128::from(addr) & !net.mask() != 0 {
            return Err(format!("`{s}` has host bits set"));
        }
        Ok(net)
    }

    /// A unique local /64 (RFC 4193) for `parts`: fd, then 40 bits of their hash.
    pub fn ula(parts: &[&str]) -> Subnet6 {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update(p.as_bytes());
            h.update([0]);
        }
        let d = h.finalize();
        let w = |a: u8, b: u8| (u16::from(a) << 8) | u16::from(b);
        Subnet6 {
            addr: Ipv6Addr::new(
                0xfd00 | u16::from(d[0]),
                w(d[1], d[2]),
                w(d[3], d[4]),
                0,
                0,
                0,
                0,
                0,
            ),
            prefix: 64,
        }
    }

    fn mask(&self) -> u128 {
        u128::MAX << (128 - u32::from(self.prefix))
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr)
    }

    /// The n-th address of the subnet.
    pub fn host(&self, n: u128) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) | (n & !self.mask()))
    }
}

impl std::fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One network a container joins, with what the project file says about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Attachment {
    /// The network's name on the host (`<project>_<key>`, or its `name:`).
    pub network: String,
    /// Its key in the project file.
    pub key: String,
    pub project: String,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub external: bool,
    #[serde(default)]
    pub subnet: Option<Subnet>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
    #[serde(default)]
    pub mac_address: Option<String>,
    /// `enable_ipv6`, with the file's IPv6 subnet and gateway if it gives them.
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub subnet6: Option<Subnet6>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub ipv6_address: Option<Ipv6Addr>,
}

/// How a service's container is networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Its own namespace, on project networks.
    Bridge,
    /// `network_mode: none`: its own namespace with only `lo`.
    None,
    /// `network_mode: host`.
    Host,
    /// `network_mode: service:NAME` (the service's first container) or `container:NAME`.
    Join(String),
}

pub fn mode(svc: &Service) -> Mode {
    match svc.network_mode.as_deref() {
        None | Some("bridge") | Some("default") => Mode::Bridge,
        Some("none") => Mode::None,
        Some("host") => Mode::Host,
        Some(m) => Mode::Join(m.to_string()),
    }
}

/// The networks a service's containers join, in the order of their interfaces (eth0 first):
/// by `priority` (highest first), then by name, as Compose orders them.
pub fn attachments(project: &Project, service: &str) -> Result<Vec<Attachment>, NetError> {
    let Some(svc) = project.services.get(service) else {
        return Ok(Vec::new());
    };
    if mode(svc) != Mode::Bridge {
        return Ok(Vec::new());
    }
    let mut joined: Vec<(String, Option<&crate::spec::model::ServiceNetwork>)> =
        if svc.networks.is_empty() {
            vec![("default".to_string(), None)]
        } else {
            svc.networks
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref()))
                .collect()
        };
    joined.sort_by(|a, b| {
        let pa = a.1.and_then(|n| n.priority).unwrap_or(0);
        let pb = b.1.and_then(|n| n.priority).unwrap_or(0);
        pb.cmp(&pa).then(a.0.cmp(&b.0))
    });
    // `links: [SERVICE:ALIAS]` of other services: the alias names this service. In Docker
    // only the linking container sees it; here every container on the networks it shares
    // with this one does (a project's services share them anyway).
    let link_aliases: Vec<String> = project
        .services
        .values()
        .flat_map(|t| t.links.iter())
        .filter_map(|l| {
            let (s, a) = l.split_once(':')?;
            (s == service && a != service).then(|| a.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for (key, cfg) in joined {
        let def = project.networks.get(&key).cloned().unwrap_or_default();
        if let Some(d) = def.driver.as_deref()
            && d != "bridge"
        {
            return Err(NetError::Invalid(format!(
                "network {key}: driver `{d}` is not supported (berth networks are bridges)"
            )));
        }
        let network = def
            .name
            .clone()
            .unwrap_or_else(|| format!("{}_{key}", project.name));
        let configs = def
            .ipam
            .as_ref()
            .map(|i| i.config.as_slice())
            .unwrap_or(&[]);
        let ipam = configs
            .iter()
            .find(|e| e.subnet.as_deref().is_some_and(|s| !s.contains(':')));
        let subnet = match ipam.and_then(|c| c.subnet.as_deref()) {
            Some(s) => Some(
                Subnet::parse(s).map_err(|e| NetError::Invalid(format!("network {key}: {e}")))?,
            ),
            None => None,
        };
        let gateway = match ipam.and_then(|c| c.gateway.as_deref()) {
            Some(g) => Some(g.parse::<Ipv4Addr>().map_err(|_| {
                NetError::Invalid(format!(
                    "network {key}: gateway `{g}` is not an IPv4 address"
                ))
            })?),
            None => None,
        };
        if let (Some(s), Some(g)) = (subnet, gateway)
            && !s.contains(g)
        {
            return Err(NetError::Invalid(format!(
                "network {key}: gateway {g} is outside its subnet {s}"
            )));
        }
        let ipv6 = def.enable_ipv6.unwrap_or(false);
        let ipam6 = configs
            .iter()
            .find(|e| e.subnet.as_deref().is_some_and(|s| s.contains(':')));
        let subnet6 = match ipam6.and_then(|c| c.subnet.as_deref()) {
            Some(s) => Some(
                Subnet6::parse(s).map_err(|e| NetError::Invalid(format!("network {key}: {e}")))?,
            ),
            None => None,
        };
        let gateway6 = match ipam6.and_then(|c| c.gateway.as_deref()) {
            Some(g) => Some(g.parse::<Ipv6Addr>().map_err(|_| {
                NetError::Invalid(format!(
                    "network {key}: gateway `{g}` is not an IPv6 address"
                ))
            })?),
            None => None,
        };
        if let (Some(s), Some(g)) = (subnet6, gateway6)
            && !s.contains(g)
        {
            return Err(NetError::Invalid(format!(
                "network {key}: gateway {g} is outside its subnet {s}"
            )));
        }
        let ipv6_address = match cfg.and_then(|c| c.ipv6_address.as_deref()) {
            Some(a) => Some(a.parse::<Ipv6Addr>().map_err(|_| {
                NetError::Invalid(format!(
                    "service {service}: ipv6_address `{a}` on network {key} is not an IPv6 address"
                ))
            })?),
            None => None,
        };
        let ipv4_address = match cfg.and_then(|c| c.ipv4_address.as_deref()) {
            Some(a) => Some(a.parse::<Ipv4Addr>().map_err(|_| {
                NetError::Invalid(format!(
                    "service {service}: ipv4_address `{a}` on network {key} is not an IPv4 address"
                ))
            })?),
            None => None,
        };
        out.push(Attachment {
            network,
            key,
            project: project.name.clone(),
            internal: def.internal.unwrap_or(false),
            external: def.external.unwrap_or(false),
            subnet,
            gateway,
            aliases: {
                let mut a = cfg.map(|c| c.aliases.clone()).unwrap_or_default();
                for l in &link_aliases {
                    if !a.contains(l) {
                        a.push(l.clone());
                    }
                }
                a
            },
            ipv4_address,
            mac_address: cfg
                .and_then(|c| c.mac_address.clone())
                .or_else(|| svc.mac_address.clone()),
            ipv6,
            subnet6,
            gateway6,
            ipv6_address,
        });
    }
    Ok(out)
}

/// A short, stable interface name: `bt` and 10 hex digits of a hash of `parts`. Linux allows
/// 15 characters; every link berth makes starts with `bt`, so leftovers can be found.
pub fn ifname(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let hex: String = d.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("bt{hex}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_network_s_link_group_comes_from_its_bridge_s_name() {
        let mut st = ipam::tests::st();
        st.bridge = "bt0123456789".into();
        assert_eq!(link_group(&st), 0x0123_4567);
        st.bridge = "bt0000000000".into();
        assert_eq!(link_group(&st), 1, "group 0 is every link's default");
        st.bridge = "other".into();
        let g = link_group(&st);
        assert!(g != 0);
        st.bridge = "otherb".into();
        assert_ne!(link_group(&st), g);
    }

    pub(crate) fn project(yaml: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("compose.yml"), yaml).unwrap();
        let opts = crate::spec::LoadOptions {
            files: vec![dir.path().join("compose.yml")],
            ..Default::default()
        };
        crate::spec::load(&opts).unwrap().project
    }

    #[test]
    fn subnets_parse_and_compare() {
        let s = Subnet::parse("10.1.2.0/24").unwrap();
        assert!(s.contains("10.1.2.77".parse().unwrap()));
        assert!(!s.contains("10.1.3.1".parse().unwrap()));
        assert_eq!(s.host(1), "10.1.2.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(s.hosts(), 254);
        assert!(s.overlaps(&Subnet::parse("10.1.0.0/16").unwrap()));
        assert!(!s.overlaps(&Subnet::parse("10.1.3.0/24").unwrap()));
        assert!(
            Subnet::parse("10.1.2.1/24")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(Subnet::parse("10.1.2.0").is_err());
        assert!(Subnet::parse("10.1.2.0/31").is_err());
    }

    #[test]
    fn default_network_and_declared_ones() {
        let p = project(
            "name: p\nservices:\n  a:\n    image: host\n  b:\n    image: host\n    networks:\n      back:\n        aliases: [db]\n        priority: 1\n      front: {}\n  c:\n    image: host\n    network_mode: none\nnetworks:\n  back:\n    internal: true\n    ipam:\n      config:\n        - subnet: 10.9.8.0/24\n          gateway: 10.9.8.1\n  front:\n    name: shared-front\n",
        );
        let a = attachments(&p, "a").unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].network, "p_default");
        let b = attachments(&p, "b").unwrap();
        assert_eq!(
            b.iter().map(|x| x.network.as_str()).collect::<Vec<_>>(),
            ["p_back", "shared-front"]
        );
        assert!(b[0].internal);
        assert_eq!(b[0].aliases, ["db"]);
        // A link's alias names the linked service.
        let q = project(
            "name: p\nservices:\n  web:\n    image: host\n    links: ['mysql:db', 'cache']\n  mysql:\n    image: host\n  cache:\n    image: host\n",
        );
        assert_eq!(attachments(&q, "mysql").unwrap()[0].aliases, ["db"]);
        assert!(attachments(&q, "cache").unwrap()[0].aliases.is_empty());
        assert_eq!(b[0].subnet, Some(Subnet::parse("10.9.8.0/24").unwrap()));
        assert!(attachments(&p, "c").unwrap().is_empty());
        assert_eq!(ifname(&["x", "y"]).len(), 12);
        assert_ne!(ifname(&["x", "y"]), ifname(&["xy"]));
    }
}

/// A container's place on its networks, once joined.
#[derive(Debug, Clone, Default)]
pub struct Joined {
    pub ifaces: Vec<link::Iface>,
    /// Where the container's resolv.conf points: the gateway of its first network, where the
    /// project's DNS server listens.
    pub nameservers: Vec<Ipv4Addr>,
    /// Its own addresses (for /etc/hosts).
    pub addresses: Vec<Ipv4Addr>,
}

fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            NetError::Invalid(format!("mac_address `{s}` is not like 02:42:ac:11:00:02"))
        })?;
    let mac: [u8; 6] = parts
        .try_into()
        .map_err(|_| NetError::Invalid(format!("mac_address `{s}` needs six bytes")))?;
    Ok(mac)
}

/// Makes the networks `atts` names exist (bridge, rules, state) and leases `container` an
/// address on each. Idempotent: a container keeps its address, a network its subnet.
pub fn join(
    root: &std::path::Path,
    container: &str,
    service: &str,
    hostname: &str,
    atts: &[Attachment],
) -> Result<Joined, NetError> {
    let _lock = ipam::lock()?;
    let mut out = Joined::default();
    let mut routed = false;
    let mut routed6 = false;
    for att in atts {
        let mut st = ensure_network(root, att)?;
        let ip = ipam::lease_address(&st, container, att.ipv4_address)?;
        let ip6 = ipam::lease_address6(&st, container, ip, att.ipv6_address)?;
        let veth = ifname(&[&root.to_string_lossy(), container, &st.name]);
        let mut aliases = att.aliases.clone();
        if hostname != container && !aliases.iter().any(|a| a == hostname) {
            aliases.push(hostname.to_string());
        }
        st.leases.insert(
            container.to_string(),
            ipam::Lease {
                ip,
                ip6,
                project: att.project.clone(),
                service: service.to_string(),
                aliases,
                hostname: hostname.to_string(),
                veth: veth.clone(),
            },
        );
        ipam::write(root, &st)?;
        let gateway = (!st.internal && !routed).then_some(st.gateway);
        routed |= gateway.is_some();
        let gateway6 = st.gateway6.filter(|_| !st.internal && !routed6);
        routed6 |= gateway6.is_some();
        if out.nameservers.is_empty() {
            out.nameservers.push(st.gateway);
        }
        out.addresses.push(ip);
        out.ifaces.push(link::Iface {
            veth,
            bridge: st.bridge.clone(),
            group: link_group(&st),
            ip,
            prefix: st.subnet.prefix,
            gateway,
            ip6: ip6.zip(st.subnet6.map(|s| s.prefix)),
            gateway6,
            mac: att.mac_address.as_deref().map(parse_mac).transpose()?,
        });
    }
    Ok(out)
}

fn ensure_network(root: &std::path::Path, att: &Attachment) -> Result<NetState, NetError> {
    if let Some(mut st) = ipam::read(root, &att.network) {
        let mut changed = false;
        if st.retiring {
            // Its project's `down` is taking it away: another project cannot join it now.
            if att.external {
                return Err(NetError::ExternalMissing(att.network.clone()));
            }
            // Its own project's `up` after a `down` that failed halfway: it is put back.
            st.retiring = false;
            ipam::write(root, &st)?;
            changed = true;
        }
        // IPv6 turned on since the network was made: it gets its IPv6 subnet now.
        if att.ipv6 && st.subnet6.is_none() {
            add_ipv6(root, att, &mut st)?;
            ipam::write(root, &st)?;
            changed = true;
        }
        // Made by an earlier up; the bridge may be gone (a reboot): put it back.
        if changed || !link::link_exists(&st.bridge) {
            link::ensure_bridge(
                &st.bridge,
                link_group(&st),
                st.gateway,
                st.subnet.prefix,
                v6_of(&st),
            )?;
            nft::install(&st)?;
        }
        if !st.internal {
            nft::ensure_forwarding(&st.name)?;
        }
        return Ok(st);
    }
    if att.external {
        return Err(NetError::ExternalMissing(att.network.clone()));
    }
    let routes = link::routes()?;
    let taken: Vec<Subnet> = ipam::all(root).iter().map(|n| n.subnet).collect();
    let subnet = ipam::pick_subnet(att, &routes, &taken, &ipam::pools())?;
    let gateway = att.gateway.unwrap_or_else(|| subnet.host(1));
    let mut st = NetState {
        name: att.network.clone(),
        project: att.project.clone(),
        bridge: ifname(&[&root.to_string_lossy(), &att.network]),
        subnet,
        gateway,
        internal: att.internal,
        subnet6: None,
        gateway6: None,
        leases: Default::default(),
        retiring: false,
    };
    if att.ipv6 {
        add_ipv6(root, att, &mut st)?;
    }
    // The state first: a failure below leaves a record that `down` (or the next `up`) uses
    // to find and remove what was made.
    ipam::write(root, &st)?;
    link::ensure_bridge(
        &st.bridge,
        link_group(&st),
        gateway,
        subnet.prefix,
        v6_of(&st),
    )?;
    nft::install(&st)?;
    if !st.internal {
        nft::ensure_forwarding(&st.name)?;
    }
    Ok(st)
}

/// Gives an `enable_ipv6` network its IPv6 subnet (the file's, or a unique local /64) and
/// gateway, on a host that has IPv6.
fn add_ipv6(root: &std::path::Path, att: &Attachment, st: &mut NetState) -> Result<(), NetError> {
    if !std::path::Path::new("/proc/sys/net/ipv6").is_dir() {
        return Err(NetError::Invalid(format!(
            "network {}: enable_ipv6 is set, but this host has no IPv6 (the kernel's ipv6 is off)",
            att.key
        )));
    }
    let net6 = att
        .subnet6
        .unwrap_or_else(|| Subnet6::ula(&[&root.to_string_lossy(), &att.network]));
    st.subnet6 = Some(net6);
    st.gateway6 = Some(att.gateway6.unwrap_or_else(|| net6.host(1)));
    Ok(())
}

fn v6_of(st: &NetState) -> Option<(Ipv6Addr, u8)> {
    st.gateway6.zip(st.subnet6.map(|s| s.prefix))
}

/// Gives up `container`'s addresses (it is being removed). Its veths go with its network
/// namespace: the kernel deletes them in one batch once the last process in it is gone, where
/// deleting each here cost a grace period (30 ms) under the host-wide lock. One that outlives
/// its namespace (held open by someone) is deleted when its network is pruned.
pub fn leave(root: &std::path::Path, container: &str) -> Result<(), NetError> {
    let _lock = ipam::lock()?;
    for mut st in ipam::all(root) {
        if st.leases.remove(container).is_some() {
            ipam::write(root, &st)?;
        }
    }
    Ok(())
}

/// The interfaces attached to `bridge` (from sysfs).
fn bridge_ports(bridge: &str) -> Vec<String> {
    std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The link group of a network's bridge and of its containers' veths on the host: 32 bits of
/// the bridge's name, which hashes the state root and the network's name (a subnet would not
/// do: one whose bridge is gone can be picked again by another state root). Hosts rarely use
/// groups (they default to 0). One request then deletes them all (`retire`).
pub fn link_group(st: &NetState) -> u32 {
    let hashed = st
        .bridge
        .strip_prefix("bt")
        .and_then(|h| h.get(..8))
        .and_then(|h| u32::from_str_radix(h, 16).ok());
    // A bridge named otherwise (none is): the name's FNV-1a hash.
    let g = hashed.unwrap_or_else(|| {
        st.bridge.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
    });
    g.max(1)
}

/// What `retire` took down: the networks, and the ports their bridges had.
#[derive(Debug, Default)]
pub struct Retired {
    networks: Vec<String>,
    ports: Vec<String>,
}

/// A container `down` is removing, and a pidfd of its init while it runs.
pub type Leaving = (String, Option<std::os::fd::OwnedFd>);

/// Takes down the bridges and packet-filter tables of `project`'s own networks ahead of their
/// state, while `berth down` removes the containers: a network goes once every container on it
/// has exited (a service keeps its network for its whole stop grace period), and while the
/// containers' cgroups and directories are still being removed. Deleting a bridge waits out
/// the kernel's RCU grace periods whether or not ports are still attached (measured here:
/// 38 ms with 50 ports, 41 ms empty), deleting veths one by one costs 23 ms each, and `nft` is a
/// process of its own: one request deletes the bridge and its veths (their link group), one
/// `nft` run drops every table. Only networks whose every lease is one of `leaving` go (another
/// project's container may be on one as an external network), and none with a container that
/// has not exited when `stopped` is set (its stop failed): those wait for `prune`, which
/// removes nothing that still has a container. External networks belong to another project
/// and stay.
pub fn retire(
    root: &std::path::Path,
    project: &str,
    leaving: Vec<Leaving>,
    stopped: &std::sync::atomic::AtomicBool,
) -> Result<Retired, NetError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let names: Vec<String> = leaving.iter().map(|(n, _)| n.clone()).collect();
    let mut running: Vec<(String, std::os::fd::OwnedFd)> = leaving
        .into_iter()
        .filter_map(|(n, fd)| fd.map(|fd| (n, fd)))
        .collect();
    loop {
        let ended: Vec<bool> = {
            let mut fds: Vec<PollFd> = running
                .iter()
                .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            if !fds.is_empty() {
                let _ = poll(&mut fds, PollTimeout::from(20u8));
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        running = running
            .into_iter()
            .zip(ended)
            .filter_map(|(r, ended)| (!ended).then_some(r))
            .collect();
        let over = stopped.load(std::sync::atomic::Ordering::Acquire);
        if running.is_empty() || over {
            break;
        }
    }
    // The containers left running keep their networks.
    let kept: Vec<&String> = running.iter().map(|(n, _)| n).collect();
    // Chosen and marked under the lock, so that no other project joins a network from now on;
    // taken down without it (the containers being removed take it to give their leases back).
    let nets: Vec<NetState> = {
        let _lock = ipam::lock()?;
        let mut nets = Vec::new();
        for mut st in ipam::all(root) {
            if st.project != project
                || !st
                    .leases
                    .keys()
                    .all(|c| names.contains(c) && !kept.contains(&c))
            {
                continue;
            }
            st.retiring = true;
            ipam::write(root, &st)?;
            nets.push(st);
        }
        nets
    };
    let ports = nets
        .iter()
        .flat_map(|st| bridge_ports(&st.bridge))
        .collect();
    std::thread::scope(|sc| {
        let deleting: Vec<_> = nets
            .iter()
            .map(|st| {
                sc.spawn(move || {
                    // The bridge and the veths in its group at once; then a bridge made before
                    // links had groups.
                    link::delete_group(link_group(st))?;
                    link::delete_link(&st.bridge)
                })
            })
            .collect();
        let rules = nft::remove_all(&nets);
        for d in deleting {
            d.join()
                .unwrap_or_else(|_| Err(step(project, "delete bridge", "the thread panicked")))?;
        }
        rules
    })?;
    Ok(Retired {
        networks: nets.into_iter().map(|st| st.name).collect(),
        ports,
    })
}

/// Removes the networks of `project` that no container uses any more (bridge, rules, state);
/// of those `retire` took down, only the state is left to remove. External networks belong to
/// another project and stay.
pub fn prune(
    root: &std::path::Path,
    project: &str,
    retired: &Retired,
) -> Result<Vec<String>, NetError> {
    let _lock = ipam::lock()?;
    // The veths of containers just removed go as the kernel tears their namespaces down, a few
    // milliseconds later; one still there after that (its namespace held open elsewhere) is
    // deleted here, or it would stay behind, detached.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(500);
    let left = |ports: &[String]| -> Vec<String> {
        ports
            .iter()
            .filter(|p| link::link_exists(p))
            .cloned()
            .collect()
    };
    while !left(&retired.ports).is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for port in left(&retired.ports) {
        link::delete_link(&port)?;
    }
    let mut removed = Vec::new();
    for st in ipam::all(root) {
        if st.project != project || !st.leases.is_empty() {
            continue;
        }
        if !retired.networks.contains(&st.name) {
            for port in bridge_ports(&st.bridge) {
                link::delete_link(&port)?;
            }
            let (bridge, rules) = std::thread::scope(|sc| {
                let rules = sc.spawn(|| nft::remove(&st));
                (link::delete_link(&st.bridge), rules.join())
            });
            bridge?;
            rules.map_err(|_| step(&st.name, "remove nft table", "the thread panicked"))??;
        }
        ipam::remove(root, &st.name);
        removed.push(st.name);
    }
    if !removed.is_empty() {
        nft::restore_forwarding()?;
    }
    Ok(removed)
}

/// The names the project's DNS answers with a lease's address: its container's name, its
/// service, its hostname and its aliases.
pub fn lease_names<'a>(container: &'a str, l: &'a ipam::Lease) -> impl Iterator<Item = &'a str> {
    [container, l.service.as_str(), l.hostname.as_str()]
        .into_iter()
        .chain(l.aliases.iter().map(String::as_str))
        .filter(|n| !n.is_empty())
}
