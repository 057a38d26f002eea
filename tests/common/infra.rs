//! Servers the scale-out tests need, each owned by the test that made it and gone when its
//! guard drops: a fresh database on the machine's PostgreSQL, a private `redis-server` on a
//! free port, a throwaway PostgreSQL cluster (for tests that stop the database), and
//! `carapace` replicas run from the real binary (for tests that kill a process).
//!
//! Addresses of the machine's servers come from `CARAPACE_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432`) and `CARAPACE_TEST_REDIS` (default
//! `redis://127.0.0.1:6379`).

use super::{rand_u64, temp_dir};
use sqlx::Executor;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn pg_server() -> String {
    std::env::var("CARAPACE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_server() -> String {
    std::env::var("CARAPACE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A port nobody listens on right now (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

async fn admin_exec(server: &str, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::any::install_default_drivers();
    let mut conn =
        <sqlx::AnyConnection as sqlx::Connection>::connect(&format!("{server}/postgres")).await?;
    conn.execute(sqlx::AssertSqlSafe(sql.to_string())).await?;
    <sqlx::AnyConnection as sqlx::Connection>::close(conn).await
}

/// A database created for one test on a PostgreSQL server, dropped (with its connections) when
/// the guard goes, also when the test panics.
pub struct PgDb {
    pub url: String,
    server: String,
    name: String,
}

impl PgDb {
    pub async fn create(tag: &str) -> PgDb {
        Self::create_on(&pg_server(), tag).await
    }

    pub async fn create_on(server: &str, tag: &str) -> PgDb {
        let name = format!("carapace_{tag}_{:x}", rand_u64());
        admin_exec(server, &format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE on {server}: {e}"));
        PgDb {
            url: format!("{server}/{name}"),
            server: server.to_string(),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Async work cannot run in `drop`; a thread with its own small runtime can.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let _ = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    admin_exec(
                        &server,
                        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    ),
                )
                .await
            });
        })
        .join();
    }
}

/// Polls `ok` every 50 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something accepts TCP connections on the loopback `port`.
pub fn port_open(port: u16) -> bool {
    addr_open(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Whether something accepts TCP connections at `addr`.
pub fn addr_open(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A `redis-server` of the test's own on a free loopback port: killed, restarted and
/// finally stopped by the test, never the machine's.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// Addresses it listens on besides 127.0.0.1.
    also: Vec<std::net::IpAddr>,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        Self::start_on(&[])
    }

    /// As `start`, listening on the addresses `also` as well as 127.0.0.1 (never 0.0.0.0).
    pub fn start_on(also: &[std::net::IpAddr]) -> OwnRedis {
        let mut r = OwnRedis {
            port: free_port(),
            child: None,
            dir: temp_dir("redis"),
            also: also.to_vec(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let child = Command::new("redis-server")
            .arg("--bind")
            .arg("127.0.0.1")
            .args(self.also.iter().map(|a| a.to_string()))
            // Protected mode answers only loopback clients when there is no password; the
            // other addresses are links to test hosts the test made itself.
            .args([
                "--protected-mode",
                if self.also.is_empty() { "yes" } else { "no" },
            ])
            .args(["--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let port = self.port;
        wait_until("redis start", Duration::from_secs(10), || port_open(port));
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let port = self.port;
        wait_until("redis stop", Duration::from_secs(10), || !port_open(port));
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root (initdb refuses root).
fn pg_cmd(tool: &str, args: &[&str]) -> std::process::Output {
    let bin = pg_bin(tool);
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

/// A throwaway PostgreSQL cluster on a free port, for tests that stop and start the database.
pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
    running: bool,
    /// Addresses it listens on besides 127.0.0.1.
    also: Vec<std::net::IpAddr>,
}

impl OwnPostgres {
    pub fn start() -> OwnPostgres {
        Self::start_on(&[])
    }

    /// As `start`, also listening on the addresses `also` (never 0.0.0.0) and trusting
    /// clients connecting to them from the same /24 (test hosts in namespaces).
    pub fn start_on(also: &[std::net::IpAddr]) -> OwnPostgres {
        let dir = PathBuf::from(format!("/tmp/carapace-pg-{:x}", rand_u64()));
        std::fs::create_dir_all(&dir).expect("pg dir");
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status();
        let data = dir.join("data");
        let out = pg_cmd(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !also.is_empty() {
            let hba: String = also
                .iter()
                .map(|a| match a {
                    std::net::IpAddr::V4(v4) => {
                        let o = v4.octets();
                        format!("host all all {}.{}.{}.0/24 trust\n", o[0], o[1], o[2])
                    }
                    std::net::IpAddr::V6(v6) => format!("host all all {v6}/128 trust\n"),
                })
                .collect();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))
                .expect("pg_hba.conf");
            std::io::Write::write_all(&mut f, hba.as_bytes()).expect("pg_hba.conf written");
        }
        let mut pg = OwnPostgres {
            port: free_port(),
            dir,
            running: false,
            also: also.to_vec(),
        };
        pg.start_again();
        pg
    }

    pub fn server(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn start_again(&mut self) {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let mut listen = vec!["127.0.0.1".to_string()];
        listen.extend(self.also.iter().map(|a| a.to_string()));
        let opts = format!(
            "-c listen_addresses={} -c port={} -c unix_socket_directories={} -c fsync=off",
            listen.join(","),
            self.port,
            path(&self.dir)
        );
        let out = pg_cmd(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\nserver log: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
        let port = self.port;
        wait_until("postgres start", Duration::from_secs(30), || {
            port_open(port)
        });
    }

    /// Fast shutdown: open connections are cut.
    pub fn stop(&mut self) {
        let data = self.dir.join("data");
        let out = pg_cmd(
            "pg_ctl",
            &["-D", path(&data), "-m", "fast", "-w", "-t", "30", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.dir.join("data");
            let _ = pg_cmd(
                "pg_ctl",
                &["-D", path(&data), "-m", "immediate", "-w", "stop"],
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// The real `carapace` binary run through `sh` with the process umask set to `umask`; the
/// caller adds the binary's arguments.
pub fn umask_command(umask: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_carapace"));
    cmd
}

/// A `carapace serve` process from the real binary, killed when the guard drops. It can be
/// stopped as an operator does (SIGTERM) and started again on the same port and data dir.
pub struct Replica {
    pub port: u16,
    pub child: Option<Child>,
    /// Appended to by every start, so a restarted replica's log holds both runs.
    pub log: PathBuf,
    pub data_dir: PathBuf,
    /// The arguments after `serve`, used again by `start_again`.
    pub args: Vec<String>,
    id: String,
    umask: Option<String>,
    /// The address it listens on (127.0.0.1 unless it runs in a test host).
    pub host: std::net::IpAddr,
    /// What the binary is run through, e.g. `ip netns exec NAME` (empty: run directly).
    prefix: Vec<String>,
}

impl Replica {
    /// Starts a replica on a free port with `args` after `serve` and waits until it listens.
    pub fn start(id: &str, dir: &Path, args: &[&str]) -> Replica {
        Self::start_as(None, id, dir, args)
    }

    /// As `start`, with the process umask set to `umask` (an octal string such as "000").
    pub fn start_with_umask(id: &str, dir: &Path, args: &[&str], umask: &str) -> Replica {
        Self::start_as(Some(umask), id, dir, args)
    }

    /// As `start`, run through `prefix` (e.g. `ip netns exec NAME`) and listening on `host`.
    pub fn start_in(
        prefix: &[String],
        host: std::net::IpAddr,
        id: &str,
        dir: &Path,
        args: &[&str],
    ) -> Replica {
        Self::launch(None, host, prefix.to_vec(), id, dir, args)
    }

    fn start_as(umask: Option<&str>, id: &str, dir: &Path, args: &[&str]) -> Replica {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        Self::launch(umask, loopback, Vec::new(), id, dir, args)
    }

    fn launch(
        umask: Option<&str>,
        host: std::net::IpAddr,
        prefix: Vec<String>,
        id: &str,
        dir: &Path,
        args: &[&str],
    ) -> Replica {
        let mut r = Replica {
            port: free_port(),
            child: None,
            log: dir.join(format!("{id}.log")),
            data_dir: dir.join(id),
            args: args.iter().map(|a| a.to_string()).collect(),
            id: id.to_string(),
            umask: umask.map(str::to_string),
            host,
            prefix,
        };
        r.start_again();
        r
    }

    /// Starts the (stopped) replica again on its port and data dir, with `self.args`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "replica {} still runs", self.id);
        let mut cmd = match (&self.umask, self.prefix.split_first()) {
            (Some(umask), _) => umask_command(umask),
            (None, Some((first, rest))) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_carapace"));
                c
            }
            (None, None) => Command::new(env!("CARGO_BIN_EXE_carapace")),
        };
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = cmd
            .arg("serve")
            .args(["--listen", &self.addr().to_string()])
            .args(["--replica-id", &self.id, "--log-format", "json"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("CARAPACE_DEMO")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("carapace runs");
        self.child = Some(child);
        let addr = self.addr();
        wait_until("replica start", Duration::from_secs(30), || addr_open(addr));
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.host, self.port)
    }

    /// SIGTERM, then waits for the process to exit by itself (it drains: sessions close with
    /// 1012, every task stops) and asserts it exited cleanly; returns how long it took.
    pub fn stop(&mut self) -> Duration {
        if self.child.is_none() {
            return Duration::ZERO;
        }
        let started = Instant::now();
        self.signal("TERM");
        match self.wait_exit(Duration::from_secs(15)) {
            Some(status) => assert!(status.success(), "replica exited badly: {}", self.logs()),
            None => panic!(
                "replica did not stop within 15 s of SIGTERM: {}",
                self.logs()
            ),
        }
        started.elapsed()
    }

    /// SIGKILL, without waiting for a drain.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(st.success());
    }

    /// Waits for the process to exit; `None` if it did not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Replicas built in-process with `App::build`, sharing one fresh PostgreSQL database, one
/// Redis and one secrets dir: one service, several doors.
pub struct Cluster {
    pub replicas: Vec<super::TestHub>,
    pub db: PgDb,
    pub redis_url: String,
    pub secrets: PathBuf,
}

impl Cluster {
    pub async fn start(n: usize, tweak: impl Fn(&mut carapace::config::Config)) -> Cluster {
        Self::start_on(n, &redis_server(), tweak).await
    }

    pub async fn start_on(
        n: usize,
        redis_url: &str,
        tweak: impl Fn(&mut carapace::config::Config),
    ) -> Cluster {
        let mut c = Cluster::empty(PgDb::create("cluster").await, redis_url);
        for i in 0..n {
            c.add(&format!("r{i}"), &tweak).await;
        }
        c
    }

    /// A cluster on `db` with no replica yet (`add` them).
    pub fn empty(db: PgDb, redis_url: &str) -> Cluster {
        Cluster {
            replicas: Vec::new(),
            db,
            redis_url: redis_url.to_string(),
            secrets: temp_dir("secrets"),
        }
    }

    /// One more replica of the same service.
    pub async fn add(&mut self, id: &str, tweak: &impl Fn(&mut carapace::config::Config)) {
        let dir = temp_dir(id);
        let mut config = carapace::config::Config::for_tests(&dir);
        config.database_url = self.db.url.clone();
        config.redis_url = Some(self.redis_url.clone());
        config.secrets_dir = self.secrets.clone();
        config.replica_id = id.to_string();
        tweak(&mut config);
        let app = carapace::App::build(config)
            .await
            .expect("replica starts")
            .spawn();
        let base = format!("http://{}", app.addr);
        let ws = format!("ws://{}/ws", app.addr);
        self.replicas.push(super::TestHub {
            app: Some(app),
            base,
            ws,
            dir,
            database_url: self.db.url.clone(),
            secrets_dir: self.secrets.clone(),
        });
    }

    /// Stops replica `i` (it drains: its sessions close with 1012) and starts it again on the
    /// same database, Redis and secrets dir, reading the keys anew (a new port).
    pub async fn restart(&mut self, i: usize) {
        self.replicas[i].stop().await;
        let id = format!("r{i}");
        self.add(&id, &|_| {}).await;
        let fresh = self.replicas.pop().expect("just added");
        self.replicas[i] = fresh;
        wait_ready(&self.replicas[i].base, Duration::from_secs(10)).await;
    }

    /// Waits until every replica says it is ready (its bus connected).
    pub async fn ready(&self) {
        for r in &self.replicas {
            wait_ready(&r.base, Duration::from_secs(10)).await;
        }
    }

    pub async fn stop(&mut self) {
        for r in &mut self.replicas {
            r.stop().await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

/// Polls `/readyz` until it answers 200.
pub async fn wait_ready(base: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(r) = carapace_client::http(base, "GET", "/readyz", None, None).await
            && r.status == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base} not ready within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `/readyz` status of a replica.
pub async fn readyz(base: &str) -> u16 {
    carapace_client::http(base, "GET", "/readyz", None, None)
        .await
        .map(|r| r.status)
        .unwrap_or(0)
}
