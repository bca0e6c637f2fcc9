//! Separate hosts on one machine: a Linux network namespace per host, each with its own
//! address on a bridge (veth pairs), and partitions made with iptables inside the
//! namespaces. Needs root.
//!
//! The harness's networks are named after its pid (`mj-<pid>-<host>`, `mjb<pid>`), torn
//! down on drop, and leftovers of a harness that died are removed by the next one
//! ([`remove_stale`]). A dev cluster's network ([`Names::dev`]) outlives the command that
//! made it and is torn down by `dev down`. Processes join a host by [`enter`], which
//! changes only their network namespace, so a FUSE mount made inside is seen outside.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// What can go wrong building or changing the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{cmd}` failed: {why}")]
    Command { cmd: String, why: String },
    #[error("the network harness needs root (it creates namespaces, veths and iptables rules)")]
    NotRoot,
}

/// One host: a namespace with one interface.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub site: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// What a network's namespaces, bridge and interfaces are called, and its subnet
/// (`10.77.SUBNET.0/24`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// Namespaces are `<prefix>-<host>`.
    pub prefix: String,
    pub bridge: String,
    /// Host `i`'s veth is `<veth>x<i>` outside (at most 15 bytes in all).
    pub veth: String,
    pub subnet: u8,
}

impl Names {
    /// A harness run's network, named after its pid.
    fn harness() -> Names {
        let pid = std::process::id();
        Names {
            prefix: format!("mj-{pid}"),
            bridge: format!("mjb{pid}"),
            veth: format!("mjv{pid}"),
            // A third octet of our own, so concurrent harnesses do not share addresses.
            subnet: (pid % 200) as u8 + 20,
        }
    }

    /// The network of the dev cluster whose key is `key` (a few hex digits from its
    /// folder), in subnets 220..=251 so it meets no harness.
    pub fn dev(key: u32) -> Names {
        let key = key & 0xffff;
        Names {
            prefix: format!("md-{key:04x}"),
            bridge: format!("mdb{key:04x}"),
            veth: format!("mdv{key:04x}"),
            subnet: 220 + (key % 32) as u8,
        }
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }
}

/// The hosts and the bridge joining them.
pub struct Net {
    pub hosts: Vec<Host>,
    names: Names,
    torn_down: bool,
    /// Left in place on drop (a dev cluster's network).
    keep: bool,
}

/// The path of namespace `ns`'s handle (made by `ip netns add`).
fn ns_path(ns: &str) -> std::path::PathBuf {
    std::path::Path::new("/run/netns").join(ns)
}

/// A command that runs `program` in network namespace `ns` and only there: unlike
/// `ip netns exec` it keeps the mount namespace, so a FUSE mount it makes is seen by
/// everyone. (`nsenter` execs the program in place: its pid is the program's.)
pub fn enter(ns: &str, program: &std::path::Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns_path(ns).display()))
        .arg("--")
        .arg(program);
    c
}

fn run(cmd: &mut Command) -> Result<String, NetError> {
    let text = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError::Command {
            cmd: text.clone(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetError::Command {
            cmd: text,
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    run(Command::new("ip").args(args))
}

/// Run `args` inside namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> Result<String, NetError> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Delete namespaces and bridges left by harnesses that are no longer running.
pub fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    let mut dead = BTreeSet::new();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("mj-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            kill_in_ns(name);
            let _ = ip(&["netns", "delete", name]);
            dead.insert(pid);
        }
    }
    for pid in dead {
        let _ = ip(&["link", "delete", &format!("mjb{pid}")]);
    }
}

/// SIGKILL every process inside namespace `ns`.
fn kill_in_ns(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Net {
    /// Build a bridge and one namespace per `(name, site)`, addressed 10.77.S.11, .12, ...,
    /// named after this process and torn down on drop.
    pub fn create(hosts: &[(&str, &str)]) -> Result<Net, NetError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(NetError::NotRoot);
        }
        remove_stale();
        Net::build(Names::harness(), hosts)
    }

    /// The network called `names` with these hosts: the one already there, or a new one
    /// (anything half made under those names is removed first). It stays after drop;
    /// [`Net::teardown`] removes it.
    pub fn open_or_create(names: Names, hosts: &[(&str, &str)]) -> Result<Net, NetError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(NetError::NotRoot);
        }
        let complete = hosts.iter().all(|(h, _)| ns_path(&names.ns(h)).exists())
            && std::path::Path::new("/sys/class/net")
                .join(&names.bridge)
                .exists();
        if complete {
            let hosts = hosts
                .iter()
                .enumerate()
                .map(|(i, (name, site))| Host {
                    name: name.to_string(),
                    site: site.to_string(),
                    ns: names.ns(name),
                    ip: Ipv4Addr::new(10, 77, names.subnet, 11 + i as u8),
                })
                .collect();
            return Ok(Net {
                hosts,
                names,
                torn_down: false,
                keep: true,
            });
        }
        Net::remove(&names, hosts.iter().map(|(h, _)| *h));
        let mut net = Net::build(names, hosts)?;
        net.keep = true;
        Ok(net)
    }

    /// Remove the network called `names` with these host names, whatever state it is in.
    pub fn remove<'a>(names: &Names, hosts: impl IntoIterator<Item = &'a str>) {
        let hosts = hosts
            .into_iter()
            .enumerate()
            .map(|(i, name)| Host {
                name: name.to_string(),
                site: String::new(),
                ns: names.ns(name),
                ip: Ipv4Addr::new(10, 77, names.subnet, 11 + i as u8),
            })
            .collect();
        let mut net = Net {
            hosts,
            names: names.clone(),
            torn_down: false,
            keep: false,
        };
        net.teardown();
    }

    /// Build the bridge and namespaces (torn down on drop, so a failure half way leaves
    /// nothing behind).
    fn build(names: Names, hosts: &[(&str, &str)]) -> Result<Net, NetError> {
        let subnet = names.subnet;
        let mut net = Net {
            hosts: Vec::new(),
            names,
            torn_down: false,
            keep: false,
        };
        let bridge_ip = format!("10.77.{subnet}.1/24");
        let bridge = net.names.bridge.clone();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &bridge_ip, "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        // If br_netfilter is loaded, bridged packets cross the root FORWARD chain: let
        // ours through whatever its policy (Docker sets DROP).
        let _ = run(Command::new("iptables").args([
            "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ]));
        for (i, (name, site)) in hosts.iter().enumerate() {
            let ns = net.names.ns(name);
            let outside = format!("{}x{i}", net.names.veth);
            let inside = format!("{}p{i}", net.names.veth);
            let addr = Ipv4Addr::new(10, 77, subnet, 11 + i as u8);
            ip(&["netns", "add", &ns])?;
            net.hosts.push(Host {
                name: name.to_string(),
                site: site.to_string(),
                ns: ns.clone(),
                ip: addr,
            });
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &ns,
            ])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
            in_ns(&ns, &["ip", "link", "set", &inside, "name", "eth0"])?;
            in_ns(
                &ns,
                &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            )?;
            in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
            in_ns(
                &ns,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.77.{subnet}.1"),
                ],
            )?;
        }
        Ok(net)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The harness's own address on the bridge (reachable from every host).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.names.subnet, 1)
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: &Host, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns]).arg(program);
        c
    }

    /// Cut the network into `groups` (host indices): a host drops every packet from a
    /// host outside its group. Hosts in no group are cut off from all. Replaces any
    /// earlier partition.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<(), NetError> {
        self.heal()?;
        for (i, h) in self.hosts.iter().enumerate() {
            let mine = groups.iter().find(|g| g.contains(&i));
            for (j, other) in self.hosts.iter().enumerate() {
                if i == j || mine.is_some_and(|g| g.contains(&j)) {
                    continue;
                }
                in_ns(
                    &h.ns,
                    &[
                        "iptables",
                        "-A",
                        "INPUT",
                        "-s",
                        &other.ip.to_string(),
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Drop every packet between hosts `a` and `b` (one link of a ring, say).
    pub fn cut(&self, a: usize, b: usize) -> Result<(), NetError> {
        for (x, y) in [(a, b), (b, a)] {
            in_ns(
                &self.hosts[x].ns,
                &[
                    "iptables",
                    "-A",
                    "INPUT",
                    "-s",
                    &self.hosts[y].ip.to_string(),
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Send `from`'s TCP connections to `to_ip:to_port` through `proxy_port` on the
    /// gateway instead (the link emulator).
    pub fn redirect(
        &self,
        from: usize,
        to_ip: Ipv4Addr,
        to_port: u16,
        proxy_port: u16,
    ) -> Result<(), NetError> {
        let proxy = format!("{}:{proxy_port}", self.gateway());
        in_ns(
            &self.hosts[from].ns,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                &to_ip.to_string(),
                "--dport",
                &to_port.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &proxy,
            ],
        )?;
        Ok(())
    }

    /// Remove every redirect [`Net::redirect`] made from host `from`.
    pub fn clear_redirects(&self, from: usize) -> Result<(), NetError> {
        in_ns(
            &self.hosts[from].ns,
            &["iptables", "-t", "nat", "-F", "OUTPUT"],
        )?;
        Ok(())
    }

    /// Remove every partition.
    pub fn heal(&self) -> Result<(), NetError> {
        for h in &self.hosts {
            in_ns(&h.ns, &["iptables", "-F", "INPUT"])?;
        }
        Ok(())
    }

    /// Kill everything in the namespaces, then delete them and the bridge.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for h in &self.hosts {
            kill_in_ns(&h.ns);
        }
        for h in &self.hosts {
            let _ = ip(&["netns", "delete", &h.ns]);
        }
        let _ = run(Command::new("iptables").args([
            "-D",
            "FORWARD",
            "-i",
            &self.names.bridge,
            "-o",
            &self.names.bridge,
            "-j",
            "ACCEPT",
        ]));
        let _ = ip(&["link", "delete", &self.names.bridge]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.teardown();
    }
}
