//! A Redis Cluster of the test's own, from the machine's `redis-server`: masters and replicas
//! on free loopback ports, each in a temp dir, assembled with `redis-cli --cluster create`.
//! Nodes can be SIGKILLed one by one; every node still running is killed when the guard drops.

use super::infra::{free_port, port_open, wait_until};
use super::temp_dir;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct OwnRedisCluster {
    pub ports: Vec<u16>,
    /// Every node's `requirepass` (and `masterauth`), if any.
    pub password: Option<String>,
    nodes: Vec<Option<Child>>,
    dir: PathBuf,
}

impl OwnRedisCluster {
    /// `masters` masters with `replicas` replicas each; returns once every node reports
    /// `cluster_state:ok` and knows every other node.
    pub fn start(masters: usize, replicas: usize) -> OwnRedisCluster {
        Self::start_with(masters, replicas, None)
    }

    /// As `start`, every node requiring `password` (clients and replicas alike).
    pub fn start_with(masters: usize, replicas: usize, password: Option<&str>) -> OwnRedisCluster {
        let version = Command::new("redis-server")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let major: u32 = version
            .split("v=")
            .nth(1)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert!(
            major >= 7,
            "the Redis Cluster tests need redis-server 7 or newer (sharded pub/sub): {version}"
        );
        let n = masters * (1 + replicas);
        let dir = temp_dir("rediscluster");
        let mut c = OwnRedisCluster {
            password: password.map(str::to_string),
            ports: Vec::new(),
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..n {
            // Cluster nodes also listen on port + 10000 (the bus); both must be free.
            let port = loop {
                let p = free_port();
                if p < 55000 && !port_open(p + 10000) {
                    break p;
                }
            };
            let node_dir = c.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut cmd = Command::new("redis-server");
            if let Some(pw) = password {
                cmd.args(["--requirepass", pw, "--masterauth", pw]);
            }
            let child = cmd
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "1000"])
                // A replica that has not synced once may not take over: sync at once (the
                // default waits 5 s for more replicas to join a diskless transfer).
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs");
            c.ports.push(port);
            c.nodes.push(Some(child));
        }
        for &p in &c.ports {
            wait_until("cluster node start", Duration::from_secs(10), || {
                port_open(p)
            });
        }
        let out = cli_command(password)
            .arg("--cluster")
            .arg("create")
            .args(c.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ports = c.ports.clone();
        wait_until("cluster_state:ok", Duration::from_secs(20), || {
            ports.iter().all(|&p| {
                let info = c.cli(p, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{n}"))
            })
        });
        wait_until("replicas in sync", Duration::from_secs(20), || {
            ports.iter().all(|&p| {
                let info = c.cli(p, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        c
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        self.url_of(&self.ports)
    }

    /// `redis+cluster://` with `seeds` as the seed nodes.
    pub fn url_of(&self, seeds: &[u16]) -> String {
        let hosts: Vec<String> = seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Ports of the running masters.
    pub fn masters(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.nodes)
            .filter(|(_, n)| n.is_some())
            .map(|(&p, _)| p)
            .filter(|&p| self.cli(p, &["ROLE"]).starts_with("master"))
            .collect()
    }

    /// Moves `slot` (holding no keys) from master `from` to master `to`, as a resharding
    /// does: importing, migrating, then the new owner announced to every master.
    pub fn move_slot(&self, slot: u16, from: u16, to: u16) {
        let id = |p: u16| self.cli(p, &["CLUSTER", "MYID"]).trim().to_string();
        let (from_id, to_id) = (id(from), id(to));
        let slot = slot.to_string();
        let ok = |out: String| assert!(out.trim() == "OK", "CLUSTER SETSLOT: {out}");
        ok(self.cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]));
        ok(self.cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]));
        for p in [to, from] {
            ok(self.cli(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]));
        }
        for p in self.masters() {
            if p != to && p != from {
                ok(self.cli(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]));
            }
        }
    }

    /// SIGKILL one node.
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|&p| p == port).expect("a node");
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether every running node reports `cluster_state:ok`.
    pub fn state_ok(&self) -> bool {
        self.ports
            .iter()
            .zip(&self.nodes)
            .filter(|(_, n)| n.is_some())
            .all(|(&p, _)| {
                self.cli(p, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            })
    }

    /// Whether every running node marks `port` as failed and reports `cluster_state:ok`
    /// (a replica took over its slots).
    pub fn failed_over(&self, port: u16) -> bool {
        let tag = format!("127.0.0.1:{port}@");
        self.state_ok()
            && self
                .ports
                .iter()
                .zip(&self.nodes)
                .filter(|(_, n)| n.is_some())
                .all(|(&p, _)| {
                    self.cli(p, &["CLUSTER", "NODES"]).lines().any(|l| {
                        l.contains(&tag)
                            && l.split_whitespace()
                                .nth(2)
                                .is_some_and(|f| f.split(',').any(|f| f == "fail"))
                    })
                })
    }

    /// One `redis-cli` command against a node of this cluster; its stdout.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(self.password.as_deref(), port, args)
    }
}

/// `redis-cli`, with the password when there is one.
fn cli_command(password: Option<&str>) -> Command {
    let mut c = Command::new("redis-cli");
    if let Some(pw) = password {
        c.args(["--no-auth-warning", "-a", pw]);
    }
    c
}

/// One `redis-cli` command against a node; its stdout ("" if it could not run).
fn cli(password: Option<&str>, port: u16, args: &[&str]) -> String {
    cli_command(password)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        for c in self.nodes.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
