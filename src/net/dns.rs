//! The embedded DNS server of a project: one UDP listener on the gateway address of each of
//! the project's networks, run by the supervisor. It answers from the address book
//! (`ipam`), so it is right the moment a container is leased or removed:
//!
//! - a container sees the names on the networks it is on, and only those: service names (every
//!   replica's address, rotated from one answer to the next), container names, hostnames and
//!   `aliases`;
//! - any other name is forwarded to the host's resolvers (those of /etc/resolv.conf; the
//!   supervisor lives in the host's network namespace, so a local stub resolver works too).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata::A, rdata::AAAA};
use tokio::net::UdpSocket;

use super::ipam;

/// Seconds a resolver may keep an answer: short, since containers come and go.
const TTL: u32 = 5;

pub struct Dns {
    root: PathBuf,
    project: String,
    upstream: Vec<SocketAddr>,
    /// Each gateway's listener task, and a duplicate of its socket (handed over when the
    /// supervisor goes idle).
    listeners: Mutex<BTreeMap<Ipv4Addr, (tokio::task::JoinHandle<()>, std::os::fd::OwnedFd)>>,
    turn: AtomicUsize,
    /// Queries being forwarded upstream.
    forwarding: Arc<AtomicUsize>,
}

/// The host's resolvers, from /etc/resolv.conf.
fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Dns {
    pub fn new(root: PathBuf, project: String) -> Arc<Dns> {
        Arc::new(Dns {
            root,
            project,
            upstream: host_resolvers(),
            listeners: Mutex::new(BTreeMap::new()),
            turn: AtomicUsize::new(0),
            forwarding: Arc::default(),
        })
    }

    /// Listens on the gateway of every network of the project, and stops listening on those
    /// that are gone. Call it when the project's containers may have changed. Errors are
    /// returned as messages for the supervisor's log.
    pub fn refresh(self: &Arc<Self>) -> Vec<String> {
        let mut errors = Vec::new();
        let gateways: Vec<Ipv4Addr> = ipam::all(&self.root)
            .into_iter()
            .filter(|n| n.project == self.project)
            .map(|n| n.gateway)
            .collect();
        let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        l.retain(|gw, (task, _)| {
            let keep = gateways.contains(gw) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for gw in gateways {
            if l.contains_key(&gw) {
                continue;
            }
            let std_sock = match std::net::UdpSocket::bind((gw, 53)) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(format!("dns: cannot listen on {gw}:53: {e}"));
                    continue;
                }
            };
            if let Some(entry) = self.listen(std_sock) {
                l.insert(gw, entry);
            }
        }
        errors
    }

    fn listen(
        self: &Arc<Self>,
        std_sock: std::net::UdpSocket,
    ) -> Option<(tokio::task::JoinHandle<()>, std::os::fd::OwnedFd)> {
        let dup = std::os::fd::OwnedFd::from(std_sock.try_clone().ok()?);
        let _ = std_sock.set_nonblocking(true);
        let sock = UdpSocket::from_std(std_sock).ok()?;
        let me = self.clone();
        Some((tokio::spawn(async move { me.serve(sock).await }), dup))
    }

    /// Serves sockets a supervisor had before its idle spell (call before `refresh`).
    pub fn adopt(self: &Arc<Self>, socks: Vec<(Ipv4Addr, std::os::fd::OwnedFd)>) {
        let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for (gw, fd) in socks {
            if let Some(entry) = self.listen(std::net::UdpSocket::from(fd)) {
                l.insert(gw, entry);
            }
        }
    }

    /// Duplicates of the listeners' sockets, for an idle spell (None if one cannot be made).
    pub fn sockets(&self) -> Option<Vec<(Ipv4Addr, std::os::fd::OwnedFd)>> {
        let l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        l.iter()
            .map(|(gw, (_, fd))| Some((*gw, fd.try_clone().ok()?)))
            .collect()
    }

    /// Whether a query is being forwarded upstream (its answer would be lost in an idle spell).
    pub fn busy(&self) -> bool {
        self.forwarding.load(Ordering::Relaxed) > 0
    }

    /// Stops every listener.
    pub fn stop(&self) {
        let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (t, _)) in std::mem::take(&mut *l) {
            t.abort();
        }
    }

    async fn serve(self: Arc<Self>, sock: UdpSocket) {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let query = buf[..n].to_vec();
            let src = match from.ip() {
                std::net::IpAddr::V4(ip) => ip,
                std::net::IpAddr::V6(_) => continue,
            };
            match self.answer(src, &query) {
                Reply::Local(bytes) => {
                    let _ = sock.send_to(&bytes, from).await;
                }
                Reply::Forward => {
                    let me = self.clone();
                    let sock = sock.clone();
                    let busy = super::InFlight::start(&self.forwarding);
                    tokio::spawn(async move {
                        let _busy = busy;
                        if let Some(bytes) = me.forward(&query).await {
                            let _ = sock.send_to(&bytes, from).await;
                        }
                    });
                }
                Reply::Drop => {}
            }
        }
    }

    /// The addresses `name` has for the container at `src`, on the networks it is on.
    pub fn lookup(&self, src: Ipv4Addr, name: &str) -> Vec<Ipv4Addr> {
        self.find(src, name).into_iter().map(|(ip, _)| ip).collect()
    }

    /// Each container `name` stands for, seen from `src`: its IPv4 address and, on an IPv6
    /// network, its IPv6 one. Replicas come in turn, rotated from one answer to the next.
    fn find(&self, src: Ipv4Addr, name: &str) -> Vec<(Ipv4Addr, Option<Ipv6Addr>)> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let nets = ipam::all(&self.root);
        let Some(asker) = nets
            .iter()
            .flat_map(|n| n.leases.iter())
            .find(|(_, l)| l.ip == src)
            .map(|(c, _)| c.clone())
        else {
            return Vec::new();
        };
        let mut out: Vec<(Ipv4Addr, Option<Ipv6Addr>)> = Vec::new();
        for n in nets.iter().filter(|n| n.leases.contains_key(&asker)) {
            for (c, l) in &n.leases {
                if super::lease_names(c, l).any(|x| x.eq_ignore_ascii_case(&name))
                    && !out.iter().any(|(ip, _)| *ip == l.ip)
                {
                    out.push((l.ip, l.ip6));
                }
            }
        }
        if out.len() > 1 {
            let k = self.turn.fetch_add(1, Ordering::Relaxed) % out.len();
            out.rotate_left(k);
        }
        out
    }

    fn answer(&self, src: Ipv4Addr, query: &[u8]) -> Reply {
        let Ok(q) = Message::from_vec(query) else {
            return Reply::Drop;
        };
        if q.metadata.message_type != MessageType::Query || q.metadata.op_code != OpCode::Query {
            return Reply::Drop;
        }
        let Some(question) = q.queries.first().cloned() else {
            return Reply::Drop;
        };
        let name = question.name().to_ascii();
        let ips = self.find(src, &name);
        if ips.is_empty() {
            return Reply::Forward;
        }
        let mut r = Message::response(q.metadata.id, OpCode::Query);
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.metadata.authoritative = true;
        r.metadata.response_code = ResponseCode::NoError;
        r.add_query(question.clone());
        // A known name without an IPv6 address gets an empty AAAA answer, so that the
        // resolver does not go looking for it elsewhere.
        let ty = question.query_type();
        for (ip, ip6) in ips {
            if ty == RecordType::A || ty == RecordType::ANY {
                r.add_answer(Record::from_rdata(
                    question.name().clone(),
                    TTL,
                    RData::A(A(ip)),
                ));
            }
            if let Some(ip6) = ip6
                && (ty == RecordType::AAAA || ty == RecordType::ANY)
            {
                r.add_answer(Record::from_rdata(
                    question.name().clone(),
                    TTL,
                    RData::AAAA(AAAA(ip6)),
                ));
            }
        }
        match r.to_vec() {
            Ok(b) => Reply::Local(b),
            Err(_) => Reply::Drop,
        }
    }

    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        for up in &self.upstream {
            let bind: SocketAddr = if up.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let Ok(s) = UdpSocket::bind(bind).await else {
                continue;
            };
            if s.send_to(query, up).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf)).await
            {
                buf.truncate(n);
                return Some(buf);
            }
        }
        // No resolver answered: say so rather than let the client wait out its timeout.
        let q = Message::from_vec(query).ok()?;
        let mut r = Message::error_msg(q.metadata.id, OpCode::Query, ResponseCode::ServFail);
        r.queries = q.queries;
        r.to_vec().ok()
    }
}

enum Reply {
    Local(Vec<u8>),
    Forward,
    Drop,
}
