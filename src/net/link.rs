//! The kernel side of networks, through rtnetlink: bridges, veth pairs, addresses, routes,
//! a container's network namespace made ready before its service starts, and tbf qdiscs for
//! bandwidth limits (netlink-packet-route types only a few qdiscs; tbf's options are encoded
//! here as the kernel's `struct tc_tbf_qopt`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures_util::TryStreamExt;
use netlink_packet_core::DefaultNla;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage, TcOption};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{NetError, Subnet, step};

/// A current-thread async runtime for one batch of netlink requests (setup code runs on
/// blocking threads, outside the reconciler's runtime).
fn block_on<T>(f: impl std::future::Future<Output = Result<T, NetError>>) -> Result<T, NetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| step("-", "start netlink runtime", e))?
        .block_on(f)
}

/// A netlink connection in the calling thread's network namespace (a socket stays in the
/// namespace it was made in, whatever the thread does next).
fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| step("-", "netlink", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(step(name, "find link", e)),
    }
}

/// Whether the host has a link `name` (checked on every start of a networked container:
/// sysfs, rather than a netlink connection and its runtime).
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// The IPv4 destinations of the host's routes (main table, default route left out): a new
/// network's subnet must not overlap one of them.
pub fn routes() -> Result<Vec<Subnet>, NetError> {
    block_on(async {
        let h = connect()?;
        let mut out = Vec::new();
        let mut rs = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = rs
            .try_next()
            .await
            .map_err(|e| step("-", "list routes", e))?
        {
            let prefix = r.header.destination_prefix_length;
            if prefix == 0 {
                continue;
            }
            for a in &r.attributes {
                if let netlink_packet_route::route::RouteAttribute::Destination(
                    netlink_packet_route::route::RouteAddress::Inet(ip),
                ) = a
                {
                    let mask = u32::MAX << (32 - u32::from(prefix.min(32)));
                    out.push(Subnet {
                        addr: Ipv4Addr::from(u32::from(*ip) & mask),
                        prefix,
                    });
                }
            }
        }
        Ok(out)
    })
}

/// Creates the bridge `name` with `gateway/prefix` and brings it up; a bridge that exists
/// already (a network that an earlier `up` made) is completed, not recreated.
pub fn ensure_bridge(
    name: &str,
    group: u32,
    gateway: Ipv4Addr,
    prefix: u8,
    v6: Option<(Ipv6Addr, u8)>,
) -> Result<(), NetError> {
    use netlink_packet_route::link::LinkAttribute;
    block_on(async {
        let h = connect()?;
        let idx = match index_of(&h, name).await? {
            Some(i) => i,
            None => {
                let mut msg = LinkBridge::new(name).build();
                msg.attributes.push(LinkAttribute::Group(group));
                h.link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(|e| step(name, "create bridge", e))?;
                index_of(&h, name)
                    .await?
                    .ok_or_else(|| step(name, "create bridge", "it vanished"))?
            }
        };
        match h
            .address()
            .add(idx, IpAddr::V4(gateway), prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            Err(e) => return Err(step(name, "address the bridge", e)),
        }
        if let Some((gw6, p6)) = v6 {
            add_address6(&h, idx, gw6, p6, name).await?;
        }
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(|e| step(name, "bring the bridge up", e))
    })
}

/// Adds an IPv6 address without duplicate address detection: berth leased it, so it is
/// unique, and DAD would keep it unusable for a second or two after the container starts.
async fn add_address6(
    h: &Handle,
    idx: u32,
    ip: Ipv6Addr,
    prefix: u8,
    what: &str,
) -> Result<(), NetError> {
    use netlink_packet_route::address::{AddressAttribute, AddressFlags};
    let mut req = h.address().add(idx, IpAddr::V6(ip), prefix);
    req.message_mut()
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(step(what, "add an IPv6 address", e)),
    }
}

/// Deletes the link `name` (a bridge, or the host side of a veth); a missing one is fine.
pub fn delete_link(name: &str) -> Result<(), NetError> {
    block_on(async {
        let h = connect()?;
        if let Some(idx) = index_of(&h, name).await? {
            match h.link().del(idx).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(step(name, "delete link", e)),
            }
        }
        Ok(())
    })
}

/// Deletes every link of the host in `group` (a network's bridge and its veths: see
/// `net::link_group`) in one request, so the kernel waits out its grace periods once for all of
/// them instead of once per link (23 ms each here). No link in the group is fine.
pub fn delete_group(group: u32) -> Result<(), NetError> {
    use netlink_packet_route::link::LinkAttribute;
    block_on(async {
        let h = connect()?;
        let mut req = h.link().del(0);
        req.message_mut()
            .attributes
            .push(LinkAttribute::Group(group));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(step(&format!("group {group:#x}"), "delete links", e)),
        }
    })
}

/// Every link on the host whose name starts with `bt` (berth's).
pub fn berth_links() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bt"))
        .collect()
}

/// Every bridge on the host whose name starts with `bt` (berth's, of any state root).
pub fn berth_bridges() -> Vec<String> {
    berth_links()
        .into_iter()
        .filter(|n| {
            std::path::Path::new("/sys/class/net")
                .join(n)
                .join("bridge")
                .is_dir()
        })
        .collect()
}

/// One interface of a container.
#[derive(Debug, Clone)]
pub struct Iface {
    /// Host side of the veth (its peer becomes `eth<i>` in the container).
    pub veth: String,
    pub bridge: String,
    /// The link group of the network (`net::link_group`), given to the host side too.
    pub group: u32,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// The default route goes through the first interface whose network is not internal.
    pub gateway: Option<Ipv4Addr>,
    /// Its IPv6 address and prefix on an IPv6 network, and the IPv6 default route's gateway.
    pub ip6: Option<(Ipv6Addr, u8)>,
    pub gateway6: Option<Ipv6Addr>,
    pub mac: Option<[u8; 6]>,
}

/// Rate limits, in bytes per second, with the burst in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shaping {
    pub egress: Option<u64>,
    pub ingress: Option<u64>,
    pub burst: Option<u64>,
}

/// Makes a network namespace for a container and wires it before anything runs in it: `lo`
/// up, one veth per network (host side on the bridge, container side renamed `eth<i>`, with
/// its address), the default route, and the bandwidth qdiscs. Returns the namespace; setup
/// joins it instead of making a new one, so the service starts with its network ready.
pub fn prepare_netns(ifaces: &[Iface], shaping: Shaping) -> Result<OwnedFd, NetError> {
    let ifaces = ifaces.to_vec();
    // A thread of its own: unshare(CLONE_NEWNET) moves only the calling thread.
    std::thread::spawn(move || -> Result<OwnedFd, NetError> {
        block_on(async move {
            let host = connect()?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| step("-", "unshare network namespace", e))?;
            let ns: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
                .map_err(|e| step("-", "open network namespace", e))?
                .into();
            let inner = connect()?;
            if let Some(lo) = index_of(&inner, "lo").await? {
                inner
                    .link()
                    .set(LinkUnspec::new_with_index(lo).up().build())
                    .execute()
                    .await
                    .map_err(|e| step("lo", "bring lo up", e))?;
            }
            let mut routed = false;
            for (i, f) in ifaces.iter().enumerate() {
                wire(&host, &inner, &ns, i, f, &mut routed).await?;
            }
            if let Some(first) = ifaces.first() {
                if let Some(rate) = shaping.egress
                    && let Some(idx) = index_of(&inner, "eth0").await?
                {
                    tbf(&inner, idx, rate, shaping.burst).await?;
                }
                if let Some(rate) = shaping.ingress
                    && let Some(idx) = index_of(&host, &first.veth).await?
                {
                    tbf(&host, idx, rate, shaping.burst).await?;
                }
            }
            Ok(ns)
        })
    })
    .join()
    .map_err(|_| step("-", "prepare network namespace", "the thread panicked"))?
}

async fn wire(
    host: &Handle,
    inner: &Handle,
    ns: &OwnedFd,
    i: usize,
    f: &Iface,
    routed: &mut bool,
) -> Result<(), NetError> {
    use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkInfo};
    // A veth left by a container that was killed with its namespace still held goes first.
    if let Some(old) = index_of(host, &f.veth).await? {
        let _ = host.link().del(old).execute().await;
    }
    let br = index_of(host, &f.bridge)
        .await?
        .ok_or_else(|| step(&f.bridge, "attach veth", "the bridge does not exist"))?;
    // One request makes the pair: the host side on the bridge and up, the container side
    // born in the container's namespace as `eth<i>` with its MAC (it is brought up after:
    // a veth cannot open before its peer exists, ENOTCONN). Creating it there
    // rather than moving it in saves the move's RCU grace period (18 ms of the 19 ms the
    // wiring took, measured with bench/net.sh).
    let mut peer = LinkUnspec::new_with_name(&format!("eth{i}")).setns_by_fd(ns.as_raw_fd());
    if let Some(mac) = f.mac {
        peer = peer.address(mac.to_vec());
    }
    let peer = peer.build();
    let mut msg = LinkVeth::new(&f.veth, "-").controller(br).up().build();
    msg.attributes.push(LinkAttribute::Group(f.group));
    for a in msg.attributes.iter_mut() {
        if let LinkAttribute::LinkInfo(infos) = a {
            for info in infos.iter_mut() {
                if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) = info {
                    *p = peer.clone();
                }
            }
        }
    }
    host.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| step(&f.veth, "create veth", e))?;
    let cv = index_of(inner, &format!("eth{i}"))
        .await?
        .ok_or_else(|| step(&f.veth, "create veth", "its peer is not in the container"))?;
    inner
        .link()
        .set(LinkUnspec::new_with_index(cv).up().build())
        .execute()
        .await
        .map_err(|e| step(&f.veth, "bring eth up in the container", e))?;
    inner
        .address()
        .add(cv, IpAddr::V4(f.ip), f.prefix)
        .execute()
        .await
        .map_err(|e| step(&f.veth, "address the container", e))?;
    if let Some((ip6, p6)) = f.ip6 {
        add_address6(inner, cv, ip6, p6, &f.veth).await?;
    }
    if let Some(gw6) = f.gateway6 {
        inner
            .route()
            .add(RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw6).build())
            .execute()
            .await
            .map_err(|e| step(&f.veth, "add the IPv6 default route", e))?;
    }
    if let Some(gw) = f.gateway
        && !*routed
    {
        inner
            .route()
            .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build())
            .execute()
            .await
            .map_err(|e| step(&f.veth, "add the default route", e))?;
        *routed = true;
    }
    Ok(())
}

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TC_LINKLAYER_ETHERNET: u8 = 1;

/// The default burst: 10 ms of the rate, at least 16 KiB (a few full-size packets, so that
/// GSO segments fit).
pub fn default_burst(rate: u64) -> u64 {
    (rate / 100).max(16 * 1024)
}

/// `struct tc_tbf_qopt`: rate, peakrate (none), limit, buffer, mtu.
fn tbf_qopt(rate: u64, burst: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(36);
    // struct tc_ratespec: cell_log u8, linklayer u8, overhead u16, cell_align i16, mpu u16,
    // rate u32 (bytes/s; 0xffffffff means: see TCA_TBF_RATE64).
    v.push(0);
    v.push(TC_LINKLAYER_ETHERNET);
    v.extend_from_slice(&0u16.to_ne_bytes());
    v.extend_from_slice(&0i16.to_ne_bytes());
    v.extend_from_slice(&0u16.to_ne_bytes());
    v.extend_from_slice(&u32::try_from(rate).unwrap_or(u32::MAX).to_ne_bytes());
    v.extend_from_slice(&[0u8; 12]); // no peak rate
    // limit: bytes that may wait, 50 ms worth plus the burst (what `tc ... latency 50ms` gives).
    let limit = rate / 20 + burst;
    v.extend_from_slice(&u32::try_from(limit).unwrap_or(u32::MAX).to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes()); // buffer: TCA_TBF_BURST says it in bytes
    v.extend_from_slice(&0u32.to_ne_bytes()); // mtu: only with a peak rate
    v
}

/// Puts a tbf qdisc at the root of link `idx`: its egress at `rate` bytes per second.
async fn tbf(h: &Handle, idx: u32, rate: u64, burst: Option<u64>) -> Result<(), NetError> {
    let burst = burst.unwrap_or_else(|| default_burst(rate));
    let mut opts = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, tbf_qopt(rate, burst))),
        TcOption::Other(DefaultNla::new(
            TCA_TBF_BURST,
            u32::try_from(burst)
                .unwrap_or(u32::MAX)
                .to_ne_bytes()
                .to_vec(),
        )),
    ];
    if rate > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            rate.to_ne_bytes().to_vec(),
        )));
    }
    let header = TcHeader {
        index: i32::try_from(idx).unwrap_or(0),
        handle: TcHandle { major: 1, minor: 0 },
        parent: TcHandle::ROOT,
        ..TcHeader::default()
    };
    let msg = TcMessage::from_parts(
        header,
        vec![
            TcAttribute::Kind("tbf".to_string()),
            TcAttribute::Options(opts),
        ],
    );
    let mut req = netlink_packet_core::NetlinkMessage::from(
        netlink_packet_route::RouteNetlinkMessage::NewQueueDiscipline(msg),
    );
    req.header.flags = netlink_packet_core::NLM_F_REQUEST
        | netlink_packet_core::NLM_F_ACK
        | netlink_packet_core::NLM_F_CREATE
        | netlink_packet_core::NLM_F_EXCL;
    let mut h = h.clone();
    let mut resp = h.request(req).map_err(|e| step("-", "add tbf qdisc", e))?;
    use futures_util::StreamExt;
    while let Some(m) = resp.next().await {
        if let netlink_packet_core::NetlinkPayload::Error(e) = m.payload
            && e.code.is_some()
        {
            return Err(step("-", "add tbf qdisc", e));
        }
    }
    Ok(())
}

/// The bytes a host-side veth has carried: (received from the container, sent to it).
pub fn counters(veth: &str) -> Option<(u64, u64)> {
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/net/{veth}/statistics/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("rx_bytes")?, read("tx_bytes")?))
}
