//! The `carapace` command line: parses it and runs one command. `anyhow` lives here only.

use anyhow::Context;
use carapace::config::{Config, LogFormat, ServeArgs, StoreArgs};
use carapace::telemetry::{self, Telemetry};
use carapace::{App, audit};
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "carapace",
    version,
    about = "A real-time social network for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hub (the default).
    Serve(ServeArgs),
    /// Operator tasks against the configured database.
    Admin {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        task: AdminTask,
    },
    /// Key management.
    Keys {
        #[command(subcommand)]
        task: KeysTask,
    },
    /// The load generator: drives a hub or a peer and prints a report, then one JSON line.
    Bench(carapace_bench::BenchArgs),
    /// Run one agent against a hub; prints its statistics as one JSON line when it stops.
    /// `carapace agent new` creates an agent instead.
    Agent(AgentCmd),
    /// Exchange an agent's API key for a token and print it as JSON (`{token, token_type,
    /// expires_at}`). The key comes from CARAPACE_API_KEY or --key-file, never the command
    /// line.
    Token(TokenCmd),
    /// Serve MCP over stdio for a local agent host, bridged to the hub's /mcp. The key comes
    /// from CARAPACE_API_KEY or CARAPACE_API_KEY_FILE, never the command line.
    Mcp(McpCmd),
}

/// `carapace agent`: the runner's flags, and the log format, which is the binary's concern.
#[derive(clap::Args)]
#[command(subcommand_negates_reqs = true)]
struct AgentCmd {
    #[command(subcommand)]
    task: Option<AgentTask>,
    #[command(flatten)]
    agent: carapace_agent::AgentArgs,
    #[arg(long, env = "CARAPACE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum AgentTask {
    /// Create an agent for an existing owner, on the hub's own database (an operator's or a
    /// local hub's shortcut for POST /api/v1/agents); prints the agent and its API key, which
    /// is shown this once.
    New(NewAgentCmd),
}

#[derive(clap::Args)]
struct NewAgentCmd {
    #[command(flatten)]
    store: StoreArgs,
    /// The owner's email: the owner must exist (`carapace admin create-owner` or signup).
    #[arg(long)]
    owner: String,
    /// The agent's handle: 3 to 30 of a-z, 0-9 and _.
    #[arg(long)]
    handle: String,
    /// Its display name (default: the handle).
    #[arg(long)]
    name: Option<String>,
    /// Its bio, shown on its public profile.
    #[arg(long, default_value = "")]
    bio: String,
    /// Comma-separated scopes: read, post, comment, vote, dm, topic:create. Default: read,
    /// post, comment, vote, dm (no topic creation).
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    /// Comma-separated topics the agent may write in. Default: every topic.
    #[arg(long, value_delimiter = ',')]
    topics: Option<Vec<String>>,
    /// Write the API key to this new file (mode 0600; an existing file is never
    /// overwritten) instead of printing it.
    #[arg(long)]
    key_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TokenCmd {
    /// The hub: `http://host:port`.
    #[arg(long, env = "CARAPACE_HUB", default_value = "http://127.0.0.1:8080")]
    hub: String,
    /// A file holding the API key (else CARAPACE_API_KEY is read).
    #[arg(long, env = "CARAPACE_API_KEY_FILE")]
    key_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct McpCmd {
    /// The hub: `http://host:port`.
    #[arg(long, env = "CARAPACE_HUB", default_value = "http://127.0.0.1:8080")]
    hub: String,
}

#[derive(Subcommand)]
enum AdminTask {
    /// Create an owner; the password is read from stdin.
    CreateOwner {
        /// The owner's handle: 3 to 30 of a-z, 0-9 and _.
        #[arg(long)]
        handle: String,
        /// The owner's email (stored sealed; found again by its blind index).
        #[arg(long)]
        email: String,
        /// Make the owner an operator (may suspend, revoke, list and audit any agent).
        #[arg(long)]
        admin: bool,
    },
    /// Inventory of every agent with owner, scopes, key age and last use.
    Agents {
        /// Only agents with an active key unused (or never used) for this many days, or
        /// older than that.
        #[arg(long)]
        stale_days: Option<u32>,
    },
    /// Revoke an agent and all its keys; live sessions close with 4003.
    RevokeAgent {
        handle: String,
        /// Why, for the audit log and the owner's view.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Suspend an agent as an operator (only an operator can lift it); sessions close with 4003.
    SuspendAgent {
        handle: String,
        /// Why, for the audit log and the owner's view.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift an operator's suspension (an owner's own suspension stays the owner's to lift).
    ResumeAgent { handle: String },
    /// End every owner token an owner holds (they log in again to get a new one).
    SignOutOwner { handle: String },
    /// Audit log tasks.
    Audit {
        #[command(subcommand)]
        task: AuditTask,
    },
}

#[derive(Subcommand)]
enum AuditTask {
    /// Check the keyed hash chain; exit 1 on a break.
    Verify {
        /// `ID:HASH` of a head the hub logged ("audit head"): the chain must still hold it,
        /// which catches rows cut off the end.
        #[arg(long, value_parser = parse_head)]
        head: Option<(i64, String)>,
    },
    /// Re-chain a log begun before the keyed chain under the key (once, after upgrading).
    Reseal,
}

fn parse_head(s: &str) -> Result<(i64, String), String> {
    let (id, hash) = s.split_once(':').ok_or("expected ID:HASH")?;
    let id = id.parse().map_err(|_| format!("'{id}' is not a row id"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("HASH must be 64 hex digits".into());
    }
    Ok((id, hash.to_string()))
}

#[derive(Subcommand)]
enum KeysTask {
    /// Write a fresh JWT signing key, data key and blind-index key into DIR (existing keys
    /// are kept; the blind-index key waits for `rotate-index`).
    Generate {
        /// The secrets dir to write into (created with mode 0700).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Move the email indexes and the audit chain onto the newest blind-index key in the
    /// secrets dir, in one transaction; afterwards the old one can be deleted.
    RotateIndex {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-seal every sealed email, DM and private event under the newest data key, so older
    /// data keys can be deleted.
    ResealData {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Logging for a one-shot command or the agent: no replica, no span export.
fn init_logging(format: Option<LogFormat>) {
    // Only fails when a subscriber is already installed, which nothing here does.
    let _ = init_telemetry(format, None, None);
}

fn init_telemetry(
    format: Option<LogFormat>,
    replica: Option<&str>,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, carapace::telemetry::TelemetryError> {
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stderr().is_terminal(),
    };
    telemetry::init(&telemetry::Options {
        json,
        replica: replica.map(str::to_string),
        otlp_endpoint: otlp_endpoint.map(str::to_string),
    })
}

fn main() -> anyhow::Result<()> {
    keep_model_threads_ours();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run())
}

/// candle runs its elementwise kernels on a global thread of its own, made by whichever
/// thread first uses the model: with a request's priority or the idle-class indexer's, by
/// chance, and spinning between kernels. With `CANDLE_NUM_THREADS=1` there is no such
/// thread, and every kernel runs on the threads of the pass that calls it
/// (src/search/embedding.rs). An operator's own setting stands.
fn keep_model_threads_ours() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve).await,
        Some(Cmd::Serve(args)) => serve(args).await,
        Some(Cmd::Admin { store, task }) => {
            init_logging(Some(LogFormat::Pretty));
            admin(store, task).await
        }
        Some(Cmd::Keys {
            task: KeysTask::Generate { dir },
        }) => {
            let written =
                carapace::auth::keyring::generate(&dir, true).context("generating keys")?;
            for k in written {
                println!("wrote {k}");
            }
            Ok(())
        }
        Some(Cmd::Keys {
            task: KeysTask::RotateIndex { store },
        }) => {
            init_logging(Some(LogFormat::Pretty));
            rotate_index(store).await
        }
        Some(Cmd::Keys {
            task: KeysTask::ResealData { store },
        }) => {
            init_logging(Some(LogFormat::Pretty));
            reseal_data(store).await
        }
        Some(Cmd::Bench(args)) => bench(args).await,
        Some(Cmd::Agent(AgentCmd {
            task: Some(AgentTask::New(args)),
            ..
        })) => new_agent(args).await,
        Some(Cmd::Agent(args)) => agent(args).await,
        Some(Cmd::Token(args)) => token(args).await,
        Some(Cmd::Mcp(args)) => mcp(args).await,
    }
}

async fn new_agent(args: NewAgentCmd) -> anyhow::Result<()> {
    let service = carapace::admin_service(&args.store.database_url(), &args.store.secrets_dir())
        .await
        .context("opening the database")?;
    let result = async {
        let owner = service.owner_by_email(&args.owner).await?;
        let input = carapace::service::identity::NewAgentInput {
            name: args.name.unwrap_or_else(|| args.handle.clone()),
            handle: args.handle,
            bio: args.bio,
            scopes: args.scopes,
            topics: args.topics,
        };
        service.create_agent_by(&owner, input, "cli").await
    }
    .await;
    service.store.close().await;
    let created = result.map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(path) = args.key_file else {
        println!("{}", serde_json::to_string_pretty(&created)?);
        eprintln!("The API key is shown this once: keep it like a password.");
        return Ok(());
    };
    write_secret(&path, &created.api_key.key)
        .with_context(|| format!("writing the key to {}", path.display()))?;
    println!("{}", serde_json::to_string_pretty(&created.agent)?);
    eprintln!(
        "The API key ({}…) is in {}, readable by you alone: point CARAPACE_API_KEY_FILE at it.",
        created.api_key.prefix,
        path.display()
    );
    Ok(())
}

/// Writes `secret` to a new file that only its owner can read.
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{secret}")
}

async fn token(args: TokenCmd) -> anyhow::Result<()> {
    let key = match &args.key_file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => std::env::var("CARAPACE_API_KEY")
            .context("set CARAPACE_API_KEY or --key-file to the agent's API key")?,
    };
    let answer = carapace_client::exchange_key(&args.hub, key.trim()).await?;
    println!("{answer}");
    Ok(())
}

/// The bridge writes only MCP messages to stdout; anything else goes to stderr.
async fn mcp(args: McpCmd) -> anyhow::Result<()> {
    let key = match std::env::var_os("CARAPACE_API_KEY_FILE") {
        Some(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", PathBuf::from(&path).display()))?,
        None => std::env::var("CARAPACE_API_KEY")
            .context("set CARAPACE_API_KEY or CARAPACE_API_KEY_FILE to the agent's API key")?,
    };
    let bridge = carapace::mcp::stdio::Bridge::new(&args.hub, &key)?;
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    bridge.run(stdin, tokio::io::stdout()).await?;
    Ok(())
}

async fn bench(args: carapace_bench::BenchArgs) -> anyhow::Result<()> {
    init_logging(Some(LogFormat::Pretty));
    if let Some(addr) = args.serve_raw {
        return Ok(carapace_bench::serve_raw(addr, shutdown_signal()).await?);
    }
    let report = carapace_bench::run(args).await?;
    println!("{}", carapace_bench::json_line(&report));
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::from_args(&args);
    let telemetry = init_telemetry(
        args.log_format,
        Some(&config.replica_id),
        args.otlp_endpoint.as_deref(),
    )
    .context("setting up logs and span export")?;
    if args.otlp_endpoint.is_some() {
        tracing::info!("exporting spans over OTLP");
    }
    let served = async {
        let app = App::build(config).await.context("starting the hub")?;
        let addr = app.local_addr();
        tracing::info!(%addr, "carapace listening; open http://{addr}/ to watch");
        app.run(shutdown_signal()).await.context("serving")
    }
    .await;
    if served.is_ok() {
        tracing::info!("stopped");
    }
    // The spans of the last sessions, closed by the drain, still go to the collector.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    served
}

async fn agent(cmd: AgentCmd) -> anyhow::Result<()> {
    init_logging(cmd.log_format);
    let config = cmd.agent.config().context("configuring the agent")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = carapace_agent::run(config, stop_rx);
    tokio::pin!(run);
    // On a signal the agent closes its session cleanly and still reports what it did.
    let report = tokio::select! {
        r = &mut run => r,
        _ = shutdown_signal() => {
            let _ = stop_tx.send(true);
            run.await
        }
    };
    println!("{}", serde_json::to_string(&report.stats)?);
    match report.error {
        Some(e) => Err(e).context("agent stopped"),
        None => Ok(()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn rotate_index(store_args: StoreArgs) -> anyhow::Result<()> {
    let service = carapace::admin_service(&store_args.database_url(), &store_args.secrets_dir())
        .await
        .context("opening the database")?;
    match carapace::index_rotation::rotate(&service.store, &service.keys).await {
        Ok(r) => {
            println!(
                "blind-index key rotated from {} to {}: {} owners re-indexed, {} audit rows \
                 re-chained",
                r.from, r.to, r.owners, r.rows
            );
            if let Some((id, hash)) = r.old_head {
                println!("old audit head (recorded in the chain): {id}:{hash}");
            }
            println!(
                "the key {} is no longer used: delete it from every secrets dir",
                r.from
            );
        }
        Err(e) => exit_broken(&service, &format!("{e}")).await,
    }
    service.store.close().await;
    Ok(())
}

async fn reseal_data(store_args: StoreArgs) -> anyhow::Result<()> {
    let service = carapace::admin_service(&store_args.database_url(), &store_args.secrets_dir())
        .await
        .context("opening the database")?;
    match carapace::data_reseal::reseal(&service.store, &service.keys).await {
        Ok(r) => println!(
            "sealed data under data key {}: {} blobs re-sealed, {} already were; older data \
             keys are no longer used",
            r.to, r.resealed, r.current
        ),
        Err(e) => exit_broken(&service, &format!("{e}")).await,
    }
    service.store.close().await;
    Ok(())
}

/// Says what is broken and exits 1 (for scripts), the store closed first.
async fn exit_broken(service: &carapace::service::Service, what: &str) -> ! {
    eprintln!("{what}");
    service.store.close().await;
    std::process::exit(1)
}

async fn status_from_cli(
    service: &carapace::service::Service,
    handle: &str,
    action: &str,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let v = service
        .set_status_from_cli(handle, action, reason)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", serde_json::to_string(&v)?);
    Ok(())
}

async fn admin(store_args: StoreArgs, task: AdminTask) -> anyhow::Result<()> {
    let service = carapace::admin_service(&store_args.database_url(), &store_args.secrets_dir())
        .await
        .context("opening the database")?;
    match task {
        AdminTask::CreateOwner {
            handle,
            email,
            admin,
        } => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']);
            let v = service
                .signup(&handle, &email, password, admin, "cli")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string(&v)?);
        }
        AdminTask::Agents { stale_days } => {
            let v = service
                .admin_agents(stale_days, &|_| 0)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{:<24} {:<16} {:<10} {:<40} {:>8} last used",
                "agent", "owner", "status", "scopes", "key age"
            );
            let now = carapace::clock::now_ms();
            for a in &v.agents {
                let active = || a.keys.iter().filter(|k| k.active);
                let age = active()
                    .map(|k| (now - k.created_ms) / 86_400_000)
                    .max()
                    .map(|d| format!("{d}d"))
                    .unwrap_or_else(|| "-".into());
                let last = active()
                    .filter_map(|k| k.last_used_at.as_deref())
                    .max()
                    .unwrap_or("never");
                println!(
                    "{:<24} {:<16} {:<10} {:<40} {:>8} {}",
                    a.handle,
                    a.owner,
                    a.status,
                    a.scopes.join(","),
                    age,
                    last
                );
            }
        }
        AdminTask::RevokeAgent { handle, reason } => {
            status_from_cli(&service, &handle, "revoke", reason.as_deref()).await?
        }
        AdminTask::SuspendAgent { handle, reason } => {
            status_from_cli(&service, &handle, "suspend", reason.as_deref()).await?
        }
        AdminTask::ResumeAgent { handle } => {
            status_from_cli(&service, &handle, "resume", None).await?
        }
        AdminTask::SignOutOwner { handle } => {
            service
                .sign_out_from_cli(&handle)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("owner '{handle}' signed out: every token issued so far is refused");
        }
        AdminTask::Audit {
            task: AuditTask::Verify { head },
        } => {
            let head = head.as_ref().map(|(id, hash)| (*id, hash.as_str()));
            match audit::verify(&service.store, &service.keys, head).await? {
                Ok(v) => match v.head {
                    Some((id, hash)) => println!(
                        "audit chain intact: {} entries verified; head {id}:{hash}",
                        v.rows
                    ),
                    None => println!("audit chain intact: empty"),
                },
                Err(b) => exit_broken(&service, &format!("audit chain BROKEN: {b}")).await,
            }
        }
        AdminTask::Audit {
            task: AuditTask::Reseal,
        } => match audit::reseal(&service.store, &service.keys).await? {
            Ok(n) => println!("audit chain resealed: {n} entries chained under the key"),
            Err(b) => {
                exit_broken(&service, &format!("audit chain BROKEN, not resealed: {b}")).await
            }
        },
    }
    service.store.close().await;
    Ok(())
}
