//! The packet filter rules of a network, in an nftables table of its own (`inet berth_<bridge>`:
//! IPv4 and IPv6 alike),
//! removed with the network. Written with the `nft` command: the nftables netlink protocol has
//! no well-kept Rust crate, and a network's rules are written once, when it is made.
//!
//! - Nothing enters the bridge from another interface unless it answers a connection from
//!   the network (other networks, berth's or not, cannot connect in: isolation).
//! - An internal network forwards nothing out either.
//! - A non-internal network's traffic out of the host is masqueraded.

use std::io::Write;
use std::process::{Command, Stdio};

use super::ipam::NetState;
use super::{NetError, step};

fn table(st: &NetState) -> String {
    format!("berth_{}", st.bridge)
}

/// The ruleset of `st` (pure; the test reads it).
pub fn ruleset(st: &NetState) -> String {
    let t = table(st);
    let br = &st.bridge;
    let mut s = format!(
        "table inet {t} {{\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname \"{br}\" oifname \"{br}\" accept\n    oifname \"{br}\" ct state established,related accept\n    oifname \"{br}\" drop\n"
    );
    if st.internal {
        s.push_str(&format!("    iifname \"{br}\" drop\n"));
    }
    s.push_str("  }\n");
    if !st.internal {
        s.push_str(&format!(
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {} oifname != \"{br}\" masquerade\n  }}\n",
            st.subnet
        ));
    }
    s.push_str("}\n");
    s
}

fn nft(network: &str, what: &'static str, input: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            step(
                network,
                what,
                format!("cannot run nft ({e}); install nftables (apt-get install nftables)"),
            )
        })?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| step(network, what, e))?;
    if !out.status.success() {
        return Err(step(
            network,
            what,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Installs (or replaces) the network's table.
pub fn install(st: &NetState) -> Result<(), NetError> {
    let text = format!("{}{}", drop_table(st), ruleset(st));
    nft(&st.name, "install packet filter rules", &text)
}

/// Removes the network's table (nothing if it is not there).
pub fn remove(st: &NetState) -> Result<(), NetError> {
    nft(&st.name, "remove packet filter rules", &drop_table(st))
}

/// Commands that delete the network's table whether or not it exists (`add` then `delete`),
/// in the `ip` family of networks made by earlier versions too.
fn drop_table(st: &NetState) -> String {
    let t = table(st);
    format!("add table inet {t}\ndelete table inet {t}\nadd table ip {t}\ndelete table ip {t}\n")
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Present while berth has turned the host's IPv4 forwarding on (host-wide, as the setting is).
const FORWARD_MARK: &str = "/run/berth-ip-forward";
const FORWARD_TABLE: &str = "berth_forward";

/// The table that keeps a host that did not forward from forwarding anything but berth's
/// traffic, once berth has turned forwarding on for its bridges.
pub fn forward_guard() -> String {
    format!(
        "table ip {FORWARD_TABLE} {{\n  chain forward {{\n    type filter hook forward priority filter - 1; policy accept;\n    iifname != \"bt*\" oifname != \"bt*\" drop\n  }}\n}}\n"
    )
}

/// Outbound access for containers needs the host to forward IPv4. A host that has it off gets
/// it on, as Docker and netavark do, but only for berth's bridges: a guard table drops any
/// other forwarding, so the host routes nothing it did not route before. `restore_forwarding`
/// undoes both once no berth bridge is left. `BERTH_IP_FORWARD=0` leaves the host alone
/// (containers then reach only their networks and the host). Call under the network lock.
pub fn ensure_forwarding(network: &str) -> Result<(), NetError> {
    if std::env::var_os("BERTH_IP_FORWARD").is_some_and(|v| v == "0")
        || std::fs::read_to_string(IP_FORWARD).is_ok_and(|s| s.trim() == "1")
    {
        return Ok(());
    }
    // The mark first: a failure after it still leaves `restore_forwarding` something to undo.
    std::fs::write(FORWARD_MARK, b"berth turned net.ipv4.ip_forward on\n")
        .map_err(|e| step(network, "record the forwarding change", e))?;
    let t = FORWARD_TABLE;
    nft(
        network,
        "install the forwarding guard",
        &format!("add table ip {t}\ndelete table ip {t}\n{}", forward_guard()),
    )?;
    std::fs::write(IP_FORWARD, b"1").map_err(|e| step(network, "turn IPv4 forwarding on", e))
}

/// Removes the tables of `nets` in one `nft` run (nothing if they are not there).
pub fn remove_all(nets: &[NetState]) -> Result<(), NetError> {
    let text: String = nets.iter().map(drop_table).collect();
    if text.is_empty() {
        return Ok(());
    }
    nft("-", "remove packet filter rules", &text)
}

/// Puts the host's forwarding back as berth found it, once no berth bridge is left on the
/// host (under the network lock).
pub fn restore_forwarding() -> Result<(), NetError> {
    if !std::path::Path::new(FORWARD_MARK).exists() || !super::link::berth_bridges().is_empty() {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, b"0").map_err(|e| step("-", "turn IPv4 forwarding off", e))?;
    let t = FORWARD_TABLE;
    nft(
        "-",
        "remove the forwarding guard",
        &format!("add table ip {t}\ndelete table ip {t}\n"),
    )?;
    let _ = std::fs::remove_file(FORWARD_MARK);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_networks_forward_nothing_out_and_others_masquerade() {
        let mut st = NetState {
            name: "p_back".into(),
            project: "p".into(),
            bridge: "bt0123456789".into(),
            subnet: super::super::Subnet::parse("10.213.4.0/24").unwrap(),
            gateway: "10.213.4.1".parse().unwrap(),
            internal: false,
            subnet6: None,
            gateway6: None,
            leases: Default::default(),
            retiring: false,
        };
        let r = ruleset(&st);
        assert!(r.contains("table inet berth_bt0123456789"));
        assert!(r.contains("oifname \"bt0123456789\" drop"));
        assert!(r.contains("ip saddr 10.213.4.0/24 oifname != \"bt0123456789\" masquerade"));
        st.internal = true;
        let r = ruleset(&st);
        assert!(r.contains("iifname \"bt0123456789\" drop"));
        assert!(!r.contains("masquerade"));
    }
}
