//! Published ports: a host port that answers for a container's port, through a proxy in the
//! project's supervisor (tokio), as Docker's userland proxy does for loopback.
//!
//! Why a proxy rather than DNAT: it answers on 127.0.0.1 without `route_localnet`, it needs
//! no `ip_forward` (a host that has it off still publishes), and it behaves the same on every
//! host. Its cost: the container sees the connection come from its network's gateway, not from
//! the client (documented in docs/decisions.md).
//!
//! `berth up` binds the host ports itself before it creates anything, so a port that is taken
//! fails `up` with nothing changed; it hands the bound sockets to the supervisor, which serves
//! them and re-binds what an edit of the file changes. The bindings are recorded in the
//! project's state (`ports.json`) for `berth port` and `berth ps`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Mode, ipam, mode};
use crate::spec::model::{Port, Project};

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(
        "{at}: host port {port}/{proto} on {ip} is already in use{holder}; free it or publish \
         another port"
    )]
    Taken {
        at: String,
        ip: String,
        port: u16,
        proto: Proto,
        holder: String,
    },
    #[error("{at}: cannot listen on {ip} port {port}/{proto}: {message}")]
    Bind {
        at: String,
        ip: String,
        port: u16,
        proto: Proto,
        message: String,
    },
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One container port the file publishes, for one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub service: String,
    pub container: String,
    pub target: u16,
    pub proto: Proto,
    /// None: every address of the host (IPv6 too where the host has it).
    pub host_ip: Option<IpAddr>,
    /// None: a free port the kernel picks (kept across `up`s while it stays free).
    pub host_port: Option<u16>,
    /// The file's item, to say where an error comes from.
    pub port: Port,
}

/// A host port bound for a container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub service: String,
    pub container: String,
    pub target: u16,
    pub proto: Proto,
    /// The address listened on: `::` (every address, IPv4 too) or `0.0.0.0` for all.
    pub host_ip: IpAddr,
    pub host_port: u16,
    /// The file fixed the host port (else the kernel picked it).
    pub fixed: bool,
}

impl Binding {
    /// The address as users write it: every address shows as `0.0.0.0`, as Docker shows it.
    pub fn shown_ip(&self) -> String {
        match self.host_ip {
            IpAddr::V6(v6) if v6.is_unspecified() => "0.0.0.0".into(),
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        }
    }

    /// `0.0.0.0:8080->80/tcp`, as `docker ps` writes it.
    pub fn shown(&self) -> String {
        format!(
            "{}:{}->{}/{}",
            self.shown_ip(),
            self.host_port,
            self.target,
            self.proto
        )
    }

    /// Whether this binding is what `w` asks for.
    pub fn serves(&self, w: &Want) -> bool {
        self.container == w.container
            && self.target == w.target
            && self.proto == w.proto
            && w.host_ip.is_none_or(|ip| ip == self.host_ip)
            && match w.host_port {
                Some(p) => self.fixed && p == self.host_port,
                None => !self.fixed,
            }
    }
}

/// A bound host socket, listening (TCP) or ready to receive (UDP).
pub struct Bound {
    pub binding: Binding,
    pub socket: OwnedFd,
}

/// The ports a project publishes, one per replica and container port. Services whose network
/// is the host's or another container's have no ports of their own (Docker discards them too):
/// they are returned as warnings.
pub fn wants(
    project: &Project,
    locate: &dyn Fn(&str, &Port) -> String,
) -> (Vec<Want>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (name, svc) in &project.services {
        if svc.ports.is_empty() {
            continue;
        }
        if mode(svc) != Mode::Bridge {
            warnings.push(format!(
                "{}: published ports are ignored with network_mode {}",
                locate(name, &svc.ports[0]),
                svc.network_mode.as_deref().unwrap_or("")
            ));
            continue;
        }
        for i in 1..=svc.replicas() {
            let container = crate::plan::container_name(&project.name, name, svc, i);
            for p in &svc.ports {
                let proto = match p.protocol.as_str() {
                    "udp" => Proto::Udp,
                    "tcp" => Proto::Tcp,
                    // Validation lets sctp through, as Compose does; the proxy speaks TCP and
                    // UDP only, so such a port is reported when it is bound.
                    _ => continue,
                };
                let host_ip = p
                    .host_ip
                    .as_deref()
                    .and_then(|s| s.trim_matches(['[', ']']).parse::<IpAddr>().ok());
                let host_port = p.host_ports().map(|r| {
                    // A range gives each replica its own port, in order.
                    r.start().saturating_add((i - 1) as u16)
                });
                out.push(Want {
                    service: name.clone(),
                    container: container.clone(),
                    target: p.target,
                    proto,
                    host_ip,
                    host_port,
                    port: p.clone(),
                });
            }
        }
    }
    (out, warnings)
}

/// Checks what `wants` cannot be served at all (an sctp port, a bad address, a range shorter
/// than the replicas), before anything is bound.
pub fn check(project: &Project, locate: &dyn Fn(&str, &Port) -> String) -> Result<(), PortError> {
    for (name, svc) in &project.services {
        if mode(svc) != Mode::Bridge {
            continue;
        }
        for p in &svc.ports {
            let at = || locate(name, p);
            if p.protocol == "sctp" {
                return Err(PortError::Invalid {
                    at: at(),
                    message: "sctp ports cannot be published by berth (tcp and udp can)".into(),
                });
            }
            if let Some(ip) = &p.host_ip
                && ip.trim_matches(['[', ']']).parse::<IpAddr>().is_err()
            {
                return Err(PortError::Invalid {
                    at: at(),
                    message: format!("host_ip `{ip}` is not an IP address"),
                });
            }
            if let Some(r) = p.host_ports() {
                let n = u32::from(*r.end()) - u32::from(*r.start()) + 1;
                if n < svc.replicas() {
                    return Err(PortError::Invalid {
                        at: at(),
                        message: format!(
                            "the host range {} has {n} port(s) for {} replicas of `{name}`",
                            p.published.as_deref().unwrap_or(""),
                            svc.replicas()
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Binds every wanted port. A port already bound in `have` (the running supervisor's, or the
/// ones a previous `up` recorded) is not wanted again; a random port reuses the one `prev`
/// recorded when it is still free, so it stays the same across `up`s.
pub fn claim(
    wants: &[Want],
    prev: &[Binding],
    locate: &dyn Fn(&str, &Port) -> String,
) -> Result<Vec<Bound>, PortError> {
    let mut out = Vec::new();
    for w in wants {
        let again = prev
            .iter()
            .find(|b| b.serves(w))
            .map(|b| (b.host_ip, b.host_port));
        let fail = |ip: IpAddr, port: u16, e: nix::Error| {
            let ip = match ip {
                IpAddr::V6(v6) if v6.is_unspecified() && w.host_ip.is_none() => {
                    "every address".into()
                }
                ip => ip.to_string(),
            };
            if e == nix::Error::EADDRINUSE {
                PortError::Taken {
                    at: locate(&w.service, &w.port),
                    ip,
                    port,
                    proto: w.proto,
                    holder: holder(w.proto, port)
                        .map(|h| format!(" by {h}"))
                        .unwrap_or_default(),
                }
            } else {
                PortError::Bind {
                    at: locate(&w.service, &w.port),
                    ip,
                    port,
                    proto: w.proto,
                    message: e.desc().to_string(),
                }
            }
        };
        let port = w.host_port.or(again.map(|a| a.1)).unwrap_or(0);
        let bound = match bind_any(w.host_ip, port, w.proto) {
            Ok(b) => b,
            // A random port that was taken meanwhile: another one.
            Err((_, _)) if w.host_port.is_none() && port != 0 => {
                bind_any(w.host_ip, 0, w.proto).map_err(|(ip, e)| fail(ip, 0, e))?
            }
            Err((ip, e)) => return Err(fail(ip, port, e)),
        };
        let (sock, ip, port) = bound;
        out.push(Bound {
            binding: Binding {
                service: w.service.clone(),
                container: w.container.clone(),
                target: w.target,
                proto: w.proto,
                host_ip: ip,
                host_port: port,
                fixed: w.host_port.is_some(),
            },
            socket: sock,
        });
    }
    Ok(out)
}

/// Binds `ip` (or every address: IPv6 and IPv4 on one socket, IPv4 alone on a host without
/// IPv6) and returns the socket with the address and port it got.
fn bind_any(
    ip: Option<IpAddr>,
    port: u16,
    proto: Proto,
) -> Result<(OwnedFd, IpAddr, u16), (IpAddr, nix::Error)> {
    let ip6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    match ip {
        Some(ip) => bind(ip, port, proto).map_err(|e| (ip, e)),
        None => match bind(ip6, port, proto) {
            Err(nix::Error::EAFNOSUPPORT | nix::Error::EADDRNOTAVAIL) => {
                let ip4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                bind(ip4, port, proto).map_err(|e| (ip4, e))
            }
            r => r.map_err(|e| (ip6, e)),
        },
    }
}

fn bind(ip: IpAddr, port: u16, proto: Proto) -> Result<(OwnedFd, IpAddr, u16), nix::Error> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, getsockname, listen, setsockopt,
        socket, sockopt,
    };
    let family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let ty = match proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if ip.is_ipv6() {
        // Every address means IPv4 too, whatever the host's bindv6only says.
        setsockopt(&fd, sockopt::Ipv6V6Only, &!ip.is_unspecified())?;
    }
    if proto == Proto::Tcp {
        // A restarted supervisor must get its port back while old connections linger in
        // TIME_WAIT; a port someone listens on still fails.
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    let addr: SockaddrStorage = match SocketAddr::new(ip, port) {
        SocketAddr::V4(a) => a.into(),
        SocketAddr::V6(a) => a.into(),
    };
    bind(fd.as_raw_fd(), &addr)?;
    if proto == Proto::Tcp {
        listen(
            &fd,
            nix::sys::socket::Backlog::new(1024).unwrap_or(nix::sys::socket::Backlog::MAXCONN),
        )?;
    }
    let got: SockaddrStorage = getsockname(fd.as_raw_fd())?;
    let port = got
        .as_sockaddr_in()
        .map(|a| a.port())
        .or_else(|| got.as_sockaddr_in6().map(|a| a.port()))
        .unwrap_or(port);
    Ok((fd, ip, port))
}

/// Who holds a host port, for the error: `pid 1234 (python3)`. Read from /proc (the host's
/// network namespace, where berth runs); None when it cannot be told.
pub fn holder(proto: Proto, port: u16) -> Option<String> {
    let files: &[&str] = match proto {
        Proto::Tcp => &["/proc/net/tcp", "/proc/net/tcp6"],
        Proto::Udp => &["/proc/net/udp", "/proc/net/udp6"],
    };
    let mut inodes = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let p = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // TCP: the listener (state 0A); UDP: any socket bound there.
            if p == Some(port) && (proto == Proto::Udp || *state == "0A") {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(l) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| l.as_os_str() == i.as_str())
            {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                return Some(format!("pid {pid} ({})", comm.trim()));
            }
        }
    }
    None
}

fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("ports.json")
}

/// The bindings recorded in a project's state directory.
pub fn recorded(state_dir: &Path) -> Vec<Binding> {
    std::fs::read_to_string(file(state_dir))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

pub fn record(state_dir: &Path, b: &[Binding]) -> std::io::Result<()> {
    // `berth up` and the supervisor it starts may both write it.
    crate::sys::atomic_write(
        &file(state_dir),
        &serde_json::to_vec_pretty(b).unwrap_or_default(),
    )
}

/// The supervisor's side: serves the bound ports, forwarding each connection (TCP) or each
/// client's datagrams (UDP) to the container's address on its first network.
pub struct Publisher {
    root: PathBuf,
    state_dir: PathBuf,
    project: String,
    addrs: Arc<Mutex<BTreeMap<String, Ipv4Addr>>>,
    /// Each port served: its binding, its task and a duplicate of its socket (handed over when
    /// the supervisor goes idle).
    served: Vec<(Binding, tokio::task::JoinHandle<()>, OwnedFd)>,
    /// Connections (TCP) and flows (UDP) being proxied.
    active: Arc<std::sync::atomic::AtomicUsize>,
}

impl Publisher {
    pub fn new(root: PathBuf, state_dir: PathBuf, project: String) -> Publisher {
        let p = Publisher {
            root,
            state_dir,
            project,
            addrs: Arc::default(),
            served: Vec::new(),
            active: Arc::default(),
        };
        p.refresh();
        p
    }

    /// Re-reads the containers' addresses (call it when containers may have changed).
    pub fn refresh(&self) {
        refresh_addrs(&self.root, &self.project, &self.addrs);
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.served.iter().map(|(b, _, _)| b.clone()).collect()
    }

    /// Duplicates of the served sockets, in the order of `bindings`, for an idle spell (None
    /// if one cannot be made).
    pub fn sockets(&self) -> Option<Vec<OwnedFd>> {
        self.served
            .iter()
            .map(|(_, _, fd)| fd.try_clone().ok())
            .collect()
    }

    /// Whether a connection or a UDP flow is being proxied (an idle spell would cut it).
    pub fn busy(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Serves sockets bound by `claim` (here or in `berth up`). Returns errors for the log.
    pub fn serve(&mut self, bound: Vec<Bound>) -> Vec<String> {
        let mut errors = Vec::new();
        for b in bound {
            let ctx = Ctx {
                root: self.root.clone(),
                project: self.project.clone(),
                addrs: self.addrs.clone(),
                container: b.binding.container.clone(),
                target: b.binding.target,
                active: self.active.clone(),
            };
            let Ok(dup) = b.socket.try_clone() else {
                errors.push(format!(
                    "port {}: cannot duplicate its socket",
                    b.binding.shown()
                ));
                continue;
            };
            let task = match b.binding.proto {
                Proto::Tcp => {
                    let l = std::net::TcpListener::from(b.socket);
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => tokio::spawn(serve_tcp(l, ctx)),
                        Err(e) => {
                            errors.push(format!("port {}: {e}", b.binding.shown()));
                            continue;
                        }
                    }
                }
                Proto::Udp => {
                    let s = std::net::UdpSocket::from(b.socket);
                    match tokio::net::UdpSocket::from_std(s) {
                        Ok(s) => tokio::spawn(serve_udp(Arc::new(s), ctx)),
                        Err(e) => {
                            errors.push(format!("port {}: {e}", b.binding.shown()));
                            continue;
                        }
                    }
                }
            };
            self.served.push((b.binding, task, dup));
        }
        if let Err(e) = record(&self.state_dir, &self.bindings()) {
            errors.push(format!("cannot record the published ports: {e}"));
        }
        errors
    }

    /// Makes the served ports those of `wants` (after an edit of the file): keeps the ports
    /// that still serve, closes the others and binds the new ones. Errors are for the log.
    pub fn converge(
        &mut self,
        wants: &[Want],
        locate: &dyn Fn(&str, &Port) -> String,
    ) -> Vec<String> {
        let mut gone = Vec::new();
        self.served.retain(|(b, t, _)| {
            let keep = wants.iter().any(|w| b.serves(w));
            if !keep {
                t.abort();
                gone.push(b.clone());
            }
            keep
        });
        let have = self.bindings();
        let new: Vec<Want> = wants
            .iter()
            .filter(|w| !have.iter().any(|b| b.serves(w)))
            .cloned()
            .collect();
        let mut errors = Vec::new();
        // One port at a time, so a taken one does not keep the others from being served.
        for w in new {
            match claim(std::slice::from_ref(&w), &gone, locate) {
                Ok(b) => errors.extend(self.serve(b)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let Err(e) = record(&self.state_dir, &self.bindings()) {
            errors.push(format!("cannot record the published ports: {e}"));
        }
        errors
    }

    pub fn stop(&mut self) {
        for (_, t, _) in self.served.drain(..) {
            t.abort();
        }
    }
}

fn refresh_addrs(root: &Path, project: &str, addrs: &Mutex<BTreeMap<String, Ipv4Addr>>) {
    let mut m = BTreeMap::new();
    for n in ipam::all(root).into_iter().filter(|n| n.project == project) {
        for (c, l) in n.leases {
            m.entry(c).or_insert(l.ip);
        }
    }
    *addrs.lock().unwrap_or_else(|e| e.into_inner()) = m;
}

#[derive(Clone)]
struct Ctx {
    root: PathBuf,
    project: String,
    addrs: Arc<Mutex<BTreeMap<String, Ipv4Addr>>>,
    container: String,
    target: u16,
    active: Arc<std::sync::atomic::AtomicUsize>,
}

impl Ctx {
    /// Counts a connection or flow as active until the returned guard drops.
    fn busy(&self) -> super::InFlight {
        super::InFlight::start(&self.active)
    }

    /// The container's address; one that is not known yet (a container created since the
    /// last refresh) is looked up again.
    fn backend(&self) -> Option<SocketAddr> {
        let get = || {
            self.addrs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&self.container)
                .copied()
        };
        let ip = get().or_else(|| {
            refresh_addrs(&self.root, &self.project, &self.addrs);
            get()
        })?;
        Some(SocketAddr::new(IpAddr::V4(ip), self.target))
    }
}

/// Bytes a proxied connection buffers each way. tokio's default 8 KiB held the proxy to 4.7
/// Gbit/s (loopback: 20.9); 32 KiB gives 11.1, and 64 KiB no more (bench/net.sh), so 64 KiB
/// per connection it is.
const BUF: usize = 32 * 1024;

async fn serve_tcp(l: tokio::net::TcpListener, ctx: Ctx) {
    loop {
        let mut inbound = match l.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors or the like: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let busy = ctx.busy();
        tokio::spawn(async move {
            let _busy = busy;
            let Some(to) = ctx.backend() else { return };
            let connect = tokio::net::TcpStream::connect(to);
            let Ok(Ok(mut out)) = tokio::time::timeout(Duration::from_secs(10), connect).await
            else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = out.set_nodelay(true);
            let _ =
                tokio::io::copy_bidirectional_with_sizes(&mut inbound, &mut out, BUF, BUF).await;
        });
    }
}

/// How long a UDP client's flow is kept without a datagram either way (as conntrack does).
const UDP_IDLE: Duration = Duration::from_secs(60);

async fn serve_udp(sock: Arc<tokio::net::UdpSocket>, ctx: Ctx) {
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<tokio::net::UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let known = flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&client)
            .cloned();
        let up = match known {
            Some(up) => up,
            None => {
                let Some(to) = ctx.backend() else { continue };
                let Ok(up) = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
                    continue;
                };
                if up.connect(to).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                flows
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client, up.clone());
                let (sock, flows, up2) = (sock.clone(), flows.clone(), up.clone());
                let busy = ctx.busy();
                tokio::spawn(async move {
                    let _busy = busy;
                    let mut buf = vec![0u8; 65536];
                    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, up2.recv(&mut buf)).await {
                        let _ = sock.send_to(&buf[..n], client).await;
                    }
                    flows
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&client);
                });
                up
            }
        };
        let _ = up.send(&buf[..n]).await;
    }
}

/// Takes ownership of a socket inherited by number (from `berth up`, or through berth-idle).
pub fn adopt(fd: i32) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; it tells whether `fd` is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // Inherited without close-on-exec; it must not be inherited again (a supervisor that goes
    // idle passes on duplicates of the sockets it serves, and only those).
    // SAFETY: F_SETFD changes only the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: `fd` is open and was handed to this process for it alone by `berth up` (see
    // `cli::up::spawn_supervisor`) or by itself before an idle spell; from here on the OwnedFd
    // is its only owner.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tests::project;

    type Row = (String, u16, Option<u16>, Proto, Option<IpAddr>);

    fn at(s: &str, p: &Port) -> String {
        format!("{s}:{}", p.target)
    }

    #[test]
    fn each_replica_gets_its_port_of_a_range_and_random_ports_stay_random() {
        let p = project(
            "services:\n  web:\n    image: x\n    scale: 2\n    ports: ['8000-8001:80', '90', '127.0.0.1::53/udp']\n",
        );
        check(&p, &at).unwrap();
        let (w, warn) = wants(&p, &at);
        assert!(warn.is_empty());
        let got: Vec<Row> = w
            .iter()
            .map(|w| {
                (
                    w.container.clone(),
                    w.target,
                    w.host_port,
                    w.proto,
                    w.host_ip,
                )
            })
            .collect();
        let lo: Option<IpAddr> = Some(Ipv4Addr::LOCALHOST.into());
        let name = |i: u32| format!("{}-web-{i}", p.name);
        assert_eq!(
            got,
            [
                (name(1), 80, Some(8000), Proto::Tcp, None),
                (name(1), 90, None, Proto::Tcp, None),
                (name(1), 53, None, Proto::Udp, lo),
                (name(2), 80, Some(8001), Proto::Tcp, None),
                (name(2), 90, None, Proto::Tcp, None),
                (name(2), 53, None, Proto::Udp, lo),
            ]
        );
    }

    #[test]
    fn what_cannot_be_served_is_an_error_before_binding() {
        let short =
            project("services:\n  web:\n    image: x\n    scale: 3\n    ports: ['8000-8001:80']\n");
        let e = check(&short, &at).unwrap_err().to_string();
        assert!(e.contains("has 2 port(s) for 3 replicas"), "{e}");
        let sctp = project("services:\n  web:\n    image: x\n    ports: ['80/sctp']\n");
        assert!(check(&sctp, &at).unwrap_err().to_string().contains("sctp"));
        let host = project(
            "services:\n  web:\n    image: x\n    network_mode: host\n    ports: ['80:80']\n",
        );
        let (w, warn) = wants(&host, &at);
        assert!(w.is_empty());
        assert!(
            warn[0].contains("ignored with network_mode host"),
            "{warn:?}"
        );
    }

    #[test]
    fn a_binding_serves_the_want_it_was_made_for() {
        let b = Binding {
            service: "web".into(),
            container: "p-web-1".into(),
            target: 80,
            proto: Proto::Tcp,
            host_ip: Ipv6Addr::UNSPECIFIED.into(),
            host_port: 40000,
            fixed: false,
        };
        let p = project("services:\n  web:\n    image: x\n    ports: ['80']\n");
        let (w, _) = wants(&p, &at);
        let mut w = w[0].clone();
        w.container = "p-web-1".into();
        assert!(b.serves(&w));
        w.host_port = Some(40000);
        assert!(!b.serves(&w), "a fixed port is not served by a random one");
        assert_eq!(b.shown(), "0.0.0.0:40000->80/tcp");
    }
}
