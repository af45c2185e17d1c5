//! End to end: project networks on the real kernel (root required; CI runs as root). The
//! peers are the test's own containers (`image: host`); nothing is left behind.

use std::path::Path;
use std::time::Duration;

#[path = "support/env.rs"]
mod env;
use env::{DownOnDrop, Env, eventually, root};

/// A TCP sink on port 5001 that reads every connection to its end.
const SINK: &str = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('',5001))\ns.listen()\nwhile True:\n  c,_=s.accept()\n  while c.recv(1<<16): pass\n  c.close()\n";

/// Sends 4 MB to HOST:5001 and prints the seconds it took, once the sink has read it all.
fn send_script(host: &str) -> String {
    format!(
        "import socket,time\nt=time.time()\nc=socket.create_connection(('{host}',5001))\nc.sendall(b'x'*4000000)\nc.shutdown(socket.SHUT_WR)\nc.recv(1)\nprint(time.time()-t)\n"
    )
}

/// The recorded state of network `name` (`<root>/networks/<name>.json`).
fn network(env: &Env, name: &str) -> serde_json::Value {
    let t = std::fs::read_to_string(env.state.join("networks").join(format!("{name}.json")))
        .expect("network state");
    serde_json::from_str(&t).expect("network state is JSON")
}

/// What a project's networks hold in the kernel, seen while it is up.
struct Objects {
    /// Bridges and host-side veths (their qdiscs go with them).
    links: Vec<String>,
    tables: Vec<String>,
    /// Where the project's DNS server listens.
    gateways: Vec<String>,
}

/// `up -d` of the project at `p`, taken down again when the guard drops; with the kernel
/// objects its networks hold, for the check after `down`.
fn up<'a>(env: &'a Env, p: &Path) -> (DownOnDrop<'a>, Objects) {
    let down = env.down_on_drop(p);
    env.ok(p, &["up", "-d", "--progress", "quiet"]);
    (down, kernel_objects(env))
}

/// The bridges, veths, nft tables and DNS addresses of the networks under the state root.
fn kernel_objects(env: &Env) -> Objects {
    let mut o = Objects {
        links: Vec::new(),
        tables: Vec::new(),
        gateways: Vec::new(),
    };
    if let Ok(rd) = std::fs::read_dir(env.state.join("networks")) {
        for e in rd.flatten() {
            let Ok(t) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                continue;
            };
            let br = v["bridge"].as_str().unwrap_or_default().to_string();
            // A network's bridge and veths share one link group, which `down` deletes in one
            // request.
            let group = |l: &str| {
                std::fs::read_to_string(format!("/sys/class/net/{l}/netdev_group"))
                    .map(|s| s.trim().to_string())
                    .ok()
            };
            let g = group(&br);
            assert!(
                g.as_deref().is_some_and(|g| g != "0"),
                "bridge {br} has no link group: {g:?}"
            );
            if let Some(l) = v["leases"].as_object() {
                for lease in l.values() {
                    let veth = lease["veth"].as_str().unwrap_or_default();
                    assert_eq!(group(veth), g, "veth {veth} is not in its bridge's group");
                }
            }
            o.tables.push(format!("berth_{br}"));
            o.links.push(br);
            o.gateways
                .push(v["gateway"].as_str().unwrap_or_default().to_string());
            if let Some(l) = v["leases"].as_object() {
                for lease in l.values() {
                    o.links
                        .push(lease["veth"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    o
}

/// The local addresses of the host's UDP sockets bound to port 53 (from /proc/net/udp).
fn dns_listeners() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|a| a.strip_suffix(":0035"))
        .filter_map(|hex| u32::from_str_radix(hex, 16).ok())
        // The kernel prints the address in host byte order of the raw network bytes.
        .map(|n| std::net::Ipv4Addr::from(n.swap_bytes()).to_string())
        .collect()
}

fn assert_nothing_left(o: &Objects) {
    assert!(!o.links.is_empty(), "the test saw no network at all");
    for l in &o.links {
        assert!(
            !Path::new("/sys/class/net").join(l).exists(),
            "link {l} left behind"
        );
    }
    let nft = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    let listed = String::from_utf8_lossy(&nft.stdout);
    for t in &o.tables {
        assert!(!listed.contains(t.as_str()), "nft table {t} left behind");
    }
    let dns = dns_listeners();
    for g in &o.gateways {
        assert!(!dns.contains(g), "a DNS listener on {g}:53 is left");
    }
}

#[test]
fn a_service_keeps_its_network_while_it_stops() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    // On SIGTERM the service waits a little, then records its interface's state.
    let p = env.project(
        "grace",
        "name: ngrace\nservices:\n  s:\n    image: host\n    volumes: ['./out:/out']\n    command: [sh, -c, 'trap \"sleep 0.5; cat /sys/class/net/eth0/operstate > /out/state; exit 0\" TERM; sleep 300 & wait']\n",
    );
    std::fs::create_dir_all(p.join("out")).expect("out");
    let (_down, objs) = up(&env, &p);
    env.ok(&p, &["down", "--progress", "quiet"]);
    let state = std::fs::read_to_string(p.join("out/state")).unwrap_or_default();
    assert_eq!(
        state.trim(),
        "up",
        "the network went before the service had stopped"
    );
    assert_nothing_left(&objs);
}

#[test]
fn a_network_another_project_is_on_outlives_its_owners_down() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    let owner = env.project(
        "owner",
        "name: nown\nservices:\n  a:\n    image: host\n    command: [sleep, '300']\n    networks: [shared]\nnetworks:\n  shared: {}\n",
    );
    let user = env.project(
        "user",
        "name: nuse\nservices:\n  b:\n    image: host\n    command: [sleep, '300']\n    networks: [shared]\nnetworks:\n  shared:\n    external: true\n    name: nown_shared\n",
    );
    // Dropped in reverse: the user's project goes first, then the owner's takes the network.
    let _down_owner = env.down_on_drop(&owner);
    let _down_user = env.down_on_drop(&user);
    env.ok(&owner, &["up", "-d", "--progress", "quiet"]);
    env.ok(&user, &["up", "-d", "--progress", "quiet"]);
    let net = network(&env, "nown_shared");
    let bridge = net["bridge"].as_str().expect("bridge").to_string();
    let veth = net["leases"]["nuse-b-1"]["veth"]
        .as_str()
        .expect("the user's lease")
        .to_string();
    env.ok(&owner, &["down", "-t", "0", "--progress", "quiet"]);
    // The owner's containers are gone; its network stays for the other project's container.
    let brif = Path::new("/sys/class/net").join(&bridge).join("brif");
    assert!(
        brif.join(&veth).exists(),
        "the bridge or the user's port went"
    );
    let o = env.ok(
        &user,
        &["exec", "b", "cat", "/sys/class/net/eth0/operstate"],
    );
    assert_eq!(o.trim(), "up", "{o}");
    env.ok(&user, &["down", "-t", "0", "--progress", "quiet"]);
    env.ok(&owner, &["down", "-t", "0", "--progress", "quiet"]);
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge left"
    );
}

#[test]
fn services_reach_each_other_by_name_and_replicas_all_answer() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    let p = env.project(
        "names",
        "name: nnames\nservices:\n  api:\n    image: host\n    scale: 3\n    command: [sh, -c, 'mkdir -p /tmp/w && hostname > /tmp/w/index.html && cd /tmp/w && exec python3 -m http.server 80']\n  web:\n    image: host\n    command: [sleep, '300']\n    links: ['api:backend']\n    networks:\n      default:\n        aliases: [front]\n",
    );
    let (_down, objs) = up(&env, &p);
    let gw = network(&env, "nnames_default")["gateway"]
        .as_str()
        .expect("gateway")
        .to_string();
    // The project's DNS server listens on the gateway (the check after `down` looks there).
    assert!(dns_listeners().contains(&gw), "{:?}", dns_listeners());
    // The service name answers with all three replicas' addresses.
    let out = env.ok(&p, &["exec", "web", "busybox", "nslookup", "api", &gw]);
    let addrs: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Address: "))
        .collect();
    assert_eq!(addrs.len(), 3, "{out}");
    // Over HTTP, by name; and each address is a different replica.
    assert!(eventually(Duration::from_secs(10), || {
        env.berth(&p, &["exec", "web", "wget", "-qO-", "http://api/"])
            .status
            .success()
    }));
    let mut seen = Vec::new();
    for a in &addrs {
        let page = env.ok(
            &p,
            &["exec", "web", "wget", "-qO-", &format!("http://{a}/")],
        );
        seen.push(page.trim().to_string());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["nnames-api-1", "nnames-api-2", "nnames-api-3"]);
    // Container names and aliases resolve; names of nothing do not.
    let o = env.ok(&p, &["exec", "api", "getent", "hosts", "front"]);
    assert!(o.contains("front"), "{o}");
    // A link's alias names the linked service.
    let o = env.ok(&p, &["exec", "web", "getent", "hosts", "backend"]);
    assert!(o.contains("backend"), "{o}");
    let o = env.ok(&p, &["exec", "api", "getent", "hosts", "nnames-web-1"]);
    assert!(o.contains("nnames-web-1"), "{o}");
    assert!(
        !env.berth(&p, &["exec", "web", "getent", "hosts", "nnames-nothing-1"])
            .status
            .success()
    );
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    assert_nothing_left(&objs);
}

/// The host's own outside IPv4 address (not loopback, not berth's).
fn host_address() -> Option<String> {
    let o = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1).is_some_and(|i| i.starts_with("bt")) {
            return None;
        }
        f.get(3)
            .and_then(|a| a.split('/').next())
            .map(str::to_string)
    })
}

/// A stand-in for the outside world: a network namespace of the test's own behind a veth
/// (198.18.7.1 on the host, 198.18.7.2 inside), running a server that answers each connection
/// with the address it came from. Removed on drop.
struct Outside {
    ns: String,
    server: Option<std::process::Child>,
}

const OUTSIDE_IP: &str = "198.18.7.2";

impl Outside {
    fn new() -> Outside {
        let ns = format!("berthtest-out-{}", std::process::id());
        let veth = format!("vo{}", std::process::id());
        let ip = |args: &[&str]| {
            let o = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip");
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ip(&["netns", "add", &ns]);
        // From here on, a failure still removes the namespace (on drop).
        let mut out = Outside {
            ns: ns.clone(),
            server: None,
        };
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", "198.18.7.1/30", "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&["-n", &ns, "addr", "add", "198.18.7.2/30", "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c"])
            .arg("import socket\ns=socket.socket()\ns.bind(('198.18.7.2',7000))\ns.listen()\nwhile True:\n  c,a=s.accept()\n  c.sendall(a[0].encode())\n  c.close()\n")
            .spawn()
            .expect("outside server");
        out.server = Some(server);
        out
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(s) = &mut self.server {
            let _ = s.kill();
            let _ = s.wait();
        }
        // The veth goes with the namespace.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn networks_are_isolated_and_internal_ones_have_no_way_out() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(host_ip) = host_address() else {
        eprintln!("skipped: the host has no outside address");
        return;
    };
    let forward_before = ip_forward();
    let outside = Outside::new();
    // A listener on the host's outside address, for the containers to try.
    let listener = std::net::TcpListener::bind((host_ip.as_str(), 0)).expect("listen");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let env = Env::new();
    let p = env.project(
        "iso",
        "name: niso\nservices:\n  a:\n    image: host\n    command: [python3, -m, http.server, '80']\n    networks: [neta]\n  b:\n    image: host\n    command: [sleep, '300']\n    networks: [netb]\n  inside:\n    image: host\n    command: [sleep, '300']\n    networks: [locked]\nnetworks:\n  neta: {}\n  netb: {}\n  locked:\n    internal: true\n",
    );
    let (_down, objs) = up(&env, &p);
    let a_ip = network(&env, "niso_neta")["leases"]["niso-a-1"]["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    let connect = |svc: &str, host: &str, port: u16| {
        env.berth(
            &p,
            &[
                "exec",
                svc,
                "python3",
                "-c",
                &format!("import socket; socket.create_connection(('{host}', {port}), timeout=2)"),
            ],
        )
        .status
        .success()
    };
    // From the host, a's server answers (so the refusals below are the network's doing).
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect((a_ip.as_str(), 80)).is_ok()
    }));
    assert!(
        !connect("b", &a_ip, 80),
        "a container on netb reached one on neta"
    );
    assert!(
        !env.berth(&p, &["exec", "b", "getent", "hosts", "a"])
            .status
            .success(),
        "a resolves on netb"
    );
    // A non-internal network reaches the host; the internal one does not.
    assert!(connect("a", &host_ip, port), "neta cannot reach the host");
    assert!(
        !connect("inside", &host_ip, port),
        "an internal network reached the host's address"
    );
    let routes = env.ok(&p, &["exec", "inside", "ip", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    // The world beyond the host: reached through masquerade (the far side sees the host's
    // address, not the container's), except from the internal network.
    let reply = |svc: &str| {
        env.berth(
            &p,
            &[
                "exec",
                svc,
                "python3",
                "-c",
                &format!("import socket; print(socket.create_connection(('{OUTSIDE_IP}', 7000), timeout=2).recv(64).decode())"),
            ],
        )
    };
    let mut seen = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            let o = reply("a");
            seen = String::from_utf8_lossy(&o.stdout).trim().to_string();
            o.status.success()
        }),
        "neta cannot reach {OUTSIDE_IP}"
    );
    assert_eq!(seen, "198.18.7.1", "the far side saw {seen}, not the host");
    assert!(
        !reply("inside").status.success(),
        "an internal network reached {OUTSIDE_IP}"
    );
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    assert_nothing_left(&objs);
    drop(outside);
    // Forwarding is as the host had it once no berth bridge is left (other tests' may be).
    let bridges_left = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("bt")
                    && e.path().join("bridge").is_dir()
            })
        })
        .unwrap_or(false);
    if !bridges_left {
        assert_eq!(ip_forward(), forward_before, "ip_forward not restored");
    }
}

#[test]
fn bandwidth_limits_hold_both_ways() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    // The sink's program as a YAML block scalar, indented under `command:`.
    let sink: String = SINK.lines().map(|l| format!("        {l}\n")).collect();
    let p = env.project(
        "bw",
        &format!(
            "name: nbw\nservices:\n  sink:\n    image: host\n    command:\n      - python3\n      - -c\n      - |\n{sink}  slowsink:\n    image: host\n    command:\n      - python3\n      - -c\n      - |\n{sink}    bandwidth:\n      ingress: 8mbit\n  tx:\n    image: host\n    command: [sleep, '300']\n    bandwidth:\n      egress: 8mbit\n  free:\n    image: host\n    command: [sleep, '300']\n"
        ),
    );
    let (_down, objs) = up(&env, &p);
    let secs = |from: &str, to: &str| -> f64 {
        let mut out = String::new();
        let ok = eventually(Duration::from_secs(10), || {
            let o = env.berth(&p, &["exec", from, "python3", "-c", &send_script(to)]);
            out = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success()
        });
        assert!(ok, "{from} -> {to} failed: {out}");
        out.trim().parse().expect("seconds")
    };
    let free = secs("free", "sink");
    // While the limited transfer runs, `stats` shows its rate and its limit.
    let (egress, sample) = std::thread::scope(|sc| {
        let probe = sc.spawn(|| {
            let sample = || {
                let o = env.ok(&p, &["stats", "--no-stream", "--format", "json", "tx"]);
                serde_json::from_str::<serde_json::Value>(o.lines().next().unwrap_or_default())
                    .expect("stats JSON")
            };
            // Once the transfer is under way (starting it takes longer on a slower machine),
            // with most of its 4 MB still to go.
            // The sample that saw it under way is the one checked: on an emulated machine
            // one `stats` takes long enough for a second to find the transfer over.
            let mut last = serde_json::Value::Null;
            eventually(Duration::from_secs(10), || {
                last = sample();
                (300_000..3_500_000).contains(&last["NetTx"].as_u64().unwrap_or(0))
                    && last["NetTxRate"].as_f64().unwrap_or(0.0) > 0.0
            });
            last
        });
        let t = secs("tx", "sink");
        (t, probe.join().expect("stats probe"))
    });
    assert_eq!(sample["NetTxLimit"], 1_000_000, "{sample}");
    let rate = sample["NetTxRate"].as_f64().unwrap_or_default();
    assert!(
        (600_000.0..=1_200_000.0).contains(&rate),
        "stats shows {rate} B/s going out under an 8mbit limit: {sample}"
    );
    let ingress = secs("free", "slowsink");
    eprintln!(
        "4 MB: unlimited {free:.2} s, egress 8mbit {egress:.2} s, ingress 8mbit {ingress:.2} s"
    );
    // 4 MB at 8 Mbit/s (1 MB/s) is 4 s; within 15 %. What the unlimited transfer took is the
    // cost of starting the two ends (half a second on an emulated machine), not of the bytes.
    for (what, t) in [("egress", egress), ("ingress", ingress)] {
        let rate = 4.0 / (t - free).max(0.1);
        assert!(
            (0.85..=1.15).contains(&rate),
            "{what}: 4 MB in {t:.2} s ({rate:.2} MB/s), free: {free:.2} s"
        );
    }
    assert!(free < 1.0, "unlimited transfer took {free:.2} s");
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    assert_nothing_left(&objs);
}

/// A port nothing listens on now (the kernel's pick, let go at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The body of `GET /` at `addr`, or None when nothing answers.
fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    let mut c = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

#[test]
fn published_ports_answer_on_the_host_and_a_taken_port_fails_up() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    let (tcp, udp) = (free_port(), free_port());
    let p = env.project(
        "ports",
        &format!(
            "name: nports\nservices:\n  web:\n    image: host\n    command: [sh, -c, 'mkdir -p /tmp/w && echo hello-ports > /tmp/w/index.html && cd /tmp/w && exec python3 -m http.server 80']\n    ports:\n      - \"{tcp}:80\"\n      - \"80\"\n  echo:\n    image: host\n    command: [python3, -c, \"import socket\\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\\ns.bind(('',9000))\\nwhile True:\\n  d,a=s.recvfrom(9000)\\n  s.sendto(d,a)\\n\"]\n    ports:\n      - target: 9000\n        published: \"{udp}\"\n        protocol: udp\n"
        ),
    );
    let (_down, objs) = up(&env, &p);
    // The fixed port, on loopback and on the host's outside address.
    let page = |a: &str| {
        let mut got = None;
        eventually(Duration::from_secs(10), || {
            got = http_get(a);
            got.is_some()
        });
        got.unwrap_or_default()
    };
    assert_eq!(page(&format!("127.0.0.1:{tcp}")).trim(), "hello-ports");
    if let Some(ip) = host_address() {
        assert_eq!(page(&format!("{ip}:{tcp}")).trim(), "hello-ports");
    }
    // `berth port` tells the fixed one; the random one answers too, and ps shows both.
    assert_eq!(
        env.ok(&p, &["port", "web", "80"]).trim(),
        format!("0.0.0.0:{tcp}")
    );
    let web = env.container(&p, "nports-web-1");
    let published: Vec<u64> = web["Publishers"]
        .as_array()
        .expect("publishers")
        .iter()
        .map(|x| x["PublishedPort"].as_u64().expect("port"))
        .collect();
    assert_eq!(published.len(), 2, "{web}");
    let random = published
        .iter()
        .copied()
        .find(|&x| x != u64::from(tcp))
        .expect("random port");
    assert_eq!(page(&format!("127.0.0.1:{random}")).trim(), "hello-ports");
    let table = env.ok(&p, &["ps"]);
    assert!(table.contains(&format!("0.0.0.0:{tcp}->80/tcp")), "{table}");
    // UDP: the echo comes back through the proxy.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let echoed = eventually(Duration::from_secs(10), || {
        let _ = s.send_to(b"ping", ("127.0.0.1", udp));
        let mut b = [0u8; 16];
        matches!(s.recv(&mut b), Ok(4)) && &b[..4] == b"ping"
    });
    assert!(echoed, "no UDP echo on {udp}");
    // Another `up` keeps the random port, and serves on.
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let again = env.container(&p, "nports-web-1");
    assert_eq!(again["Publishers"], web["Publishers"]);
    assert_eq!(page(&format!("127.0.0.1:{tcp}")).trim(), "hello-ports");

    // A port someone else listens on: `up` fails, saying where and who, and creates nothing.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let taken = held.local_addr().expect("addr").port();
    let q = env.project(
        "taken",
        &format!("name: ntaken\nservices:\n  web:\n    image: host\n    command: [sleep, '300']\n    ports: [\"{taken}:80\"]\n"),
    );
    let _down_q = env.down_on_drop(&q);
    let o = env.berth(&q, &["up", "-d", "--progress", "quiet"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "up with a taken port succeeded");
    for want in [
        "berth.yaml:".to_string(),
        "services.web.ports[0]".to_string(),
        format!("{taken}/tcp"),
        "already in use".to_string(),
        format!("pid {}", std::process::id()),
    ] {
        assert!(err.contains(&want), "`{want}` missing from: {err}");
    }
    assert!(!env.state.join("projects").join("ntaken").exists());
    assert!(
        !env.state
            .join("networks")
            .join("ntaken_default.json")
            .exists()
    );
    drop(held);

    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    assert!(
        http_get(&format!("127.0.0.1:{tcp}")).is_none(),
        "port {tcp} still answers after down"
    );
    assert_nothing_left(&objs);
}

#[test]
fn ipv6_networks_give_containers_addresses_and_names() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    if !Path::new("/proc/sys/net/ipv6").is_dir() {
        eprintln!("skipped: the host has no IPv6");
        return;
    }
    let env = Env::new();
    let p = env.project(
        "v6",
        "name: nv6\nservices:\n  srv:\n    image: host\n    command: [sh, -c, 'mkdir -p /tmp/w && echo over-v6 > /tmp/w/index.html && cd /tmp/w && exec python3 -m http.server 80 --bind ::']\n    networks: [dual]\n  cli:\n    image: host\n    command: [sleep, '300']\n    networks:\n      dual:\n        ipv6_address: fd00:be:7::99\nnetworks:\n  dual:\n    enable_ipv6: true\n    ipam:\n      config:\n        - subnet: fd00:be:7::/64\n",
    );
    let (_down, objs) = up(&env, &p);
    let net = network(&env, "nv6_dual");
    assert_eq!(net["subnet6"]["addr"], "fd00:be:7::", "{net}");
    let srv6 = net["leases"]["nv6-srv-1"]["ip6"]
        .as_str()
        .expect("srv's IPv6 address")
        .to_string();
    // The addresses are on the interfaces, the file's one where it asked.
    let addrs = env.ok(&p, &["exec", "cli", "ip", "-6", "addr", "show", "eth0"]);
    assert!(addrs.contains("fd00:be:7::99/64"), "{addrs}");
    let routes = env.ok(&p, &["exec", "cli", "ip", "-6", "route"]);
    assert!(routes.contains("default via fd00:be:7::1"), "{routes}");
    // The name resolves to the IPv6 address too (AAAA), and HTTP over IPv6 answers.
    let hosts = env.ok(&p, &["exec", "cli", "getent", "ahostsv6", "srv"]);
    assert!(hosts.contains(&srv6), "{hosts}");
    let get = format!(
        "import socket\nc=socket.create_connection(('{srv6}',80),timeout=2)\nc.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nprint(c.makefile().read())\n"
    );
    let mut page = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        let o = env.berth(&p, &["exec", "cli", "python3", "-c", &get]);
        page = String::from_utf8_lossy(&o.stdout).into_owned();
        o.status.success()
    }));
    assert!(page.contains("over-v6"), "{page}");
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    assert_nothing_left(&objs);
}
