//! Test hosts: Linux network namespaces made by the test itself, each joined to the machine
//! by one veth pair per named link (e.g. `clients`, `redis`, `pg`) with a /30 of its own
//! from 10.213.0.0/16. A process runs inside through `prefix()` (`ip netns exec NAME`).
//! Cutting a link sets its host end down: the namespace keeps its address and route, and
//! whatever it sends that way vanishes without an error (a silent partition, as a dead
//! switch port gives); healing sets it up again.
//!
//! Names carry the test process's pid (`cpt<pid><letter>`, veths `c<pid><letter><k>`); the
//! guard deletes its namespace and veths when it drops, also on panic. What a killed earlier
//! run left behind is deleted the first time a process makes a host here, and a /24 still in
//! use (by another test process) is skipped.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// One link of a test host: the machine's end and the namespace's end of a veth pair.
#[derive(Clone, Debug)]
pub struct Link {
    pub label: String,
    /// The veth on the machine's side (the one `cut` sets down).
    pub host_if: String,
    /// The machine's address on this link: what a server on the machine binds to for it.
    pub host_ip: IpAddr,
    /// The namespace's address on this link: what it listens on, and its source address.
    pub ns_ip: IpAddr,
}

/// A network namespace with its links, deleted when the guard drops.
pub struct TestHost {
    pub name: String,
    links: Vec<Link>,
}

/// Hosts made so far by this process (for unique names), and whether leftovers were swept.
static MADE: Mutex<(u32, bool)> = Mutex::new((0, false));

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|e| panic!("{e} (the partition tests need root for ip netns)"))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in one of our names (`cpt<pid><letter>` or `c<pid><letter><k>`), if it is one.
fn pid_in(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].chars().next()?;
    (after.is_ascii_lowercase() && !digits.is_empty())
        .then(|| digits.parse().ok())
        .flatten()
}

/// Deletes namespaces and veths left by test processes that no longer run.
fn sweep_leftovers() {
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if pid_in(name, "cpt").is_some_and(|p| !alive(p)) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        // "12: c1234a0@if11: <...>"
        let Some(name) = line.split(':').nth(1).map(|n| n.trim()) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or_default();
        if pid_in(name, "c").is_some_and(|p| !alive(p)) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// A /24 under 10.213.0.0/16 on which the machine has no address yet.
fn free_block(start: u32) -> u8 {
    let addrs = must(&["-o", "-4", "addr", "show"]);
    (0..250)
        .map(|i| ((start + i) % 250 + 1) as u8)
        .find(|b| !addrs.contains(&format!(" 10.213.{b}.")))
        .expect("a free /24 under 10.213.0.0/16")
}

impl TestHost {
    /// Makes a namespace with one veth link per label, numbered in order.
    pub fn new(labels: &[&str]) -> TestHost {
        assert!(labels.len() <= 10, "at most 10 links");
        let pid = std::process::id();
        let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
        if !made.1 {
            sweep_leftovers();
            made.1 = true;
        }
        let n = made.0;
        made.0 += 1;
        let letter = (b'a' + (n % 26) as u8) as char;
        let name = format!("cpt{pid}{letter}");
        // Names are unique per process; a host of this process's pid from an earlier
        // process (pids are reused) is gone with that process, or swept just above.
        let _ = ip(&["netns", "del", &name]);
        let mut host = TestHost {
            name: name.clone(),
            links: Vec::new(),
        };
        must(&["netns", "add", &name]);
        must(&["-n", &name, "link", "set", "lo", "up"]);
        let block = free_block(pid.wrapping_mul(7).wrapping_add(n));
        for (k, label) in labels.iter().enumerate() {
            let host_if = format!("c{pid}{letter}{k}");
            let ns_if = format!("eth{k}");
            let _ = ip(&["link", "del", &host_if]);
            must(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
            ]);
            let base = 4 * k as u8;
            let host_ip = Ipv4Addr::new(10, 213, block, base + 1);
            let ns_ip = Ipv4Addr::new(10, 213, block, base + 2);
            // Pushed before it is configured, so that Drop removes it whatever fails next.
            host.links.push(Link {
                label: label.to_string(),
                host_if: host_if.clone(),
                host_ip: host_ip.into(),
                ns_ip: ns_ip.into(),
            });
            must(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
            must(&["link", "set", &host_if, "up"]);
            must(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &ns_if,
            ]);
            must(&["-n", &name, "link", "set", &ns_if, "up"]);
        }
        host
    }

    pub fn link(&self, label: &str) -> &Link {
        self.links
            .iter()
            .find(|l| l.label == label)
            .unwrap_or_else(|| panic!("no link {label} on {}", self.name))
    }

    /// What runs a command inside: `ip netns exec NAME` (it execs, so the pid is the
    /// command's own).
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Cuts the link: its machine end goes down, packets either way are dropped silently.
    pub fn cut(&self, label: &str) {
        must(&["link", "set", &self.link(label).host_if, "down"]);
    }

    /// Heals the link.
    pub fn heal(&self, label: &str) {
        must(&["link", "set", &self.link(label).host_if, "up"]);
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // The veths first: a process still inside would keep the namespace (and so its
        // end of every pair) alive after `netns del`.
        for l in &self.links {
            let _ = ip(&["link", "del", &l.host_if]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}
