//! A real `haproxy` in front of test replicas, run from `deploy/haproxy.cfg` exactly as
//! shipped: the replicas' addresses in `CARAPACE_1..`, a free loopback port in
//! `CARAPACE_LB_BIND`, an admin socket of its own in `CARAPACE_LB_ADMIN`. Its log (stdout and
//! stderr) goes to a file; the process is killed when the guard drops.

use super::infra::{free_port, port_open, wait_until};
use super::temp_dir;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The configuration operators run.
pub const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg");

pub struct Haproxy {
    pub port: u16,
    pub log: PathBuf,
    admin: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl Haproxy {
    /// Starts haproxy in front of the replicas listening on `replica_ports` (servers `r1`,
    /// `r2`, ... in that order) and waits until it listens and every server passed a check.
    pub fn start(replica_ports: &[u16]) -> Haproxy {
        let addrs: Vec<String> = replica_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        Self::start_at(&addrs)
    }

    /// As `start`, for replicas at `host:port` addresses (e.g. in a test host's namespace).
    pub fn start_at(replicas: &[String]) -> Haproxy {
        assert!(
            (1..=9).contains(&replicas.len()),
            "deploy/haproxy.cfg has 1 to 9 servers"
        );
        let dir = temp_dir("haproxy");
        let port = free_port();
        let log = dir.join("haproxy.log");
        let admin = dir.join("admin.sock");
        let logf = std::fs::File::create(&log).expect("haproxy log file");
        // Debian puts it in /usr/sbin, which a user's PATH may not hold.
        let bin = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("haproxy");
        let mut cmd = Command::new(bin);
        cmd.args(["-db", "-f", CONFIG])
            .env("CARAPACE_LB_BIND", format!("127.0.0.1:{port}"))
            .env("CARAPACE_LB_ADMIN", &admin)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log file handle"))
            .stderr(logf);
        for (i, a) in replicas.iter().enumerate() {
            cmd.env(format!("CARAPACE_{}", i + 1), a);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("haproxy does not run ({e}): apt-get install haproxy (scripts/test.sh does)")
        });
        let lb = Haproxy {
            port,
            log,
            admin,
            dir,
            child: Some(child),
        };
        wait_until("haproxy listens", Duration::from_secs(10), || {
            port_open(port)
        });
        for i in 1..=replicas.len() {
            lb.wait_checked_up(i, Duration::from_secs(10));
        }
        lb
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// One command on the admin socket, and its whole answer.
    pub fn admin(&self, command: &str) -> String {
        let mut s = UnixStream::connect(&self.admin).expect("haproxy admin socket");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(format!("{command}\n").as_bytes())
            .expect("admin command sent");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("admin answer");
        out
    }

    /// The state of server `r{n}` and its last check, e.g. ("UP", "L7OK") or ("DOWN",
    /// "L7STS"), from `show stat`.
    pub fn server(&self, n: usize) -> (String, String) {
        let [state, check] = self.stat(n, ["status", "check_status"]);
        (state, check)
    }

    /// Columns of server `r{n}`'s line in `show stat` (`status`, `stot` for the sessions
    /// it was given in all, `scur` for those open now...).
    pub fn stat<const N: usize>(&self, n: usize, columns: [&str; N]) -> [String; N] {
        let stat = self.admin("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .unwrap_or_else(|| panic!("no column {name} in show stat: {stat}"))
        };
        let (px, sv) = (col("pxname"), col("svname"));
        let wanted = columns.map(col);
        let name = format!("r{n}");
        let line = lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(px) == Some(&"replicas") && f.get(sv) == Some(&name.as_str()))
            .unwrap_or_else(|| panic!("no server {name} in show stat: {stat}"));
        wanted.map(|c| line.get(c).copied().unwrap_or_default().to_string())
    }

    /// Waits until server `r{n}` is in `state` (`UP`, `DOWN`); returns how long it took.
    pub fn wait_state(&self, n: usize, state: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        wait_until(&format!("haproxy sees r{n} {state}"), timeout, || {
            self.server(n).0 == state
        });
        t0.elapsed()
    }

    /// Waits until server `r{n}` is up and its last health check passed (at start HAProxy
    /// counts a server up before it has checked it).
    pub fn wait_checked_up(&self, n: usize, timeout: Duration) {
        wait_until(&format!("haproxy checks r{n} up"), timeout, || {
            let (state, check) = self.server(n);
            state == "UP" && check == "L7OK"
        });
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
