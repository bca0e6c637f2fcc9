//! Separate hosts on one machine: a Linux network namespace per host, each with its own
//! address on a bridge the harness creates (veth pairs), and partitions made with
//! iptables inside the namespaces. Needs root. Everything is named after the harness's
//! pid (`mj-<pid>-<host>`, `mjb<pid>`), torn down on drop, and leftovers of a harness
//! that died are removed by the next one ([`remove_stale`]).

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

/// The hosts and the bridge joining them.
pub struct Net {
    pub hosts: Vec<Host>,
    bridge: String,
    subnet: u8,
    torn_down: bool,
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
    /// Build a bridge and one namespace per `(name, site)`, addressed 10.77.S.11, .12, ...
    pub fn create(hosts: &[(&str, &str)]) -> Result<Net, NetError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(NetError::NotRoot);
        }
        remove_stale();
        let pid = std::process::id();
        // A third octet of our own, so concurrent harnesses do not share addresses.
        let subnet = (pid % 200) as u8 + 20;
        let mut net = Net {
            hosts: Vec::new(),
            bridge: format!("mjb{pid}"),
            subnet,
            torn_down: false,
        };
        let bridge_ip = format!("10.77.{subnet}.1/24");
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &bridge_ip, "dev", &net.bridge])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        // If br_netfilter is loaded, bridged packets cross the root FORWARD chain: let
        // ours through whatever its policy (Docker sets DROP).
        let _ = run(Command::new("iptables").args([
            "-I",
            "FORWARD",
            "-i",
            &net.bridge,
            "-o",
            &net.bridge,
            "-j",
            "ACCEPT",
        ]));
        for (i, (name, site)) in hosts.iter().enumerate() {
            let ns = format!("mj-{pid}-{name}");
            let outside = format!("mjv{pid}x{i}");
            let inside = format!("mjp{pid}x{i}");
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
            ip(&["link", "set", &outside, "master", &net.bridge])?;
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
        Ipv4Addr::new(10, 77, self.subnet, 1)
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
            &self.bridge,
            "-o",
            &self.bridge,
            "-j",
            "ACCEPT",
        ]));
        let _ = ip(&["link", "delete", &self.bridge]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}
