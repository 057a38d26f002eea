//! Carapace: a real-time social network for AI agents. `App::build` assembles one replica
//! (store, keys, bus, service, hub, HTTP) from a `Config`; `main` and the tests both use it.

pub mod abuse;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod bus_watch;
pub mod clock;
pub mod config;
pub mod data_reseal;
pub mod delivery;
pub mod demo;
pub mod history;
pub mod http;
pub mod hub;
pub mod index_rotation;
pub mod input_errors;
pub mod mcp;
pub mod memory;
pub mod metrics;
pub mod private_fs;
pub mod protocol;
pub mod ratelimit;
pub mod revocation_watch;
pub mod search;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod websocket;

use crate::auth::keyring::KeyRing;
use crate::bus::Broker;
use crate::bus::local::LocalBroker;
use crate::bus::redis::RedisBus;
use crate::config::{Config, RateLimitMode};
use crate::delivery::egress::Egress;
use crate::history::History;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::service::Service;
use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("secrets: {0}")]
    Secrets(#[from] auth::AuthError),
    #[error(
        "{why}; the database already holds data written under keys, so none are made anew in \
         {dir}: point --secrets-dir at the replicas' secrets"
    )]
    KeysMissing { dir: String, why: auth::AuthError },
    #[error(
        "the database's email indexes and audit chain are under blind-index key '{id}', which \
         is not in {dir}: give every replica the deployment's current secrets"
    )]
    IndexKeyMissing { dir: String, id: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bus: {0}")]
    Bus(String),
    #[error("cannot start the writer threads: {0}")]
    Egress(std::io::Error),
    #[error(transparent)]
    Embedding(#[from] search::embedding::EmbedError),
}

/// One replica, built and bound, not yet serving.
pub struct App {
    pub service: Arc<Service>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    listener: TcpListener,
    /// Flipped first when the replica is told to stop: `/readyz` answers 503 from then on.
    leaving: watch::Sender<bool>,
    /// Flipped after the drain grace: sessions close with 1012, new connections are refused.
    draining: watch::Sender<bool>,
    /// True while the bus has been down for longer than `Config::bus_loss_grace`.
    bus_lost: watch::Sender<bool>,
    /// Kept until `run` returns: the session writers run there.
    egress: Egress,
}

/// Opens the store and the key ring as `serve` does (also used by `admin`).
pub async fn open_store_and_keys(
    database_url: &str,
    secrets_dir: &std::path::Path,
) -> Result<(Store, KeyRing), StartError> {
    let store = Store::connect(database_url).await?;
    let keys = match KeyRing::load(secrets_dir) {
        Ok(keys) => keys,
        // Fresh keys only for a database that holds nothing yet: what was sealed, indexed,
        // signed or chained under other keys would not open under new ones, and a replica
        // writing under keys of its own would split the deployment (a mistyped or unmounted
        // secrets dir). Every owner, and so everything else, leaves an audit row.
        Err(why) if store.audit_last_id().await? > 0 => {
            store.close().await;
            return Err(StartError::KeysMissing {
                dir: secrets_dir.display().to_string(),
                why,
            });
        }
        Err(_) => {
            auth::keyring::generate(secrets_dir, false)?;
            KeyRing::load(secrets_dir)?
        }
    };
    // Without the blind-index key in use (old secrets after a rotation, or a dir missing the
    // first key) a replica would find no owner and chain nothing: it stops here instead.
    let in_use = store.index_key_id().await?;
    let id = in_use.as_deref().unwrap_or(auth::keyring::FIRST_INDEX_ID);
    if keys.index_key(id).is_none() {
        let id = id.to_string();
        store.close().await;
        return Err(StartError::IndexKeyMissing {
            dir: secrets_dir.display().to_string(),
            id,
        });
    }
    Ok((store, keys))
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartError> {
        // First: a bad model directory is a configuration mistake to report before anything
        // is opened or bound.
        let embedder = match &config.embedding_model {
            None => None,
            Some(dir) => Some(Arc::new(load_embedder(dir.clone()).await?)),
        };
        let (store, keys) = open_store_and_keys(&config.database_url, &config.secrets_dir).await?;
        let metrics = Arc::new(Metrics::default());
        let limits = config.limits.budgets(RateLimiter::new(
            config.rate_limits == RateLimitMode::Default,
        ));
        if config.rate_limits == RateLimitMode::Off {
            tracing::warn!("RATE LIMITS ARE OFF: use this only for benchmarks");
        }
        let redis = match &config.redis_url {
            None => None,
            Some(url) => {
                // Replicas of one deployment share the database, hence this id, hence one
                // namespace on Redis; other deployments on the same Redis stay apart.
                let cluster = store.cluster_id().await?;
                let redis = RedisBus::open(url, &cluster, &config.replica_id, metrics.clone())
                    .map_err(|e| StartError::Bus(e.to_string()))?;
                redis
                    .check()
                    .await
                    .map_err(|e| StartError::Bus(e.to_string()))?;
                tracing::info!(cluster = %cluster, "using the Redis bus");
                Some(redis)
            }
        };
        let keys = Arc::new(keys);
        let mut egress = Egress::start(config.egress_threads).map_err(StartError::Egress)?;
        // The Hub gets the bus's listening and presence handles; the broker is built with the
        // Hub as its handler, so publishing reaches it by a direct call and nothing in the
        // Hub leads back to the broker.
        let hub = Hub::new(
            redis.as_ref().map(RedisBus::subscriptions),
            redis.as_ref().map(RedisBus::presence),
            History::new(store.clone(), keys.clone()),
            metrics.clone(),
            &mut egress,
        );
        let limits = limits.with_shared(redis.as_ref().map(RedisBus::limits));
        let bus: Arc<dyn Broker> = match redis {
            None => {
                metrics.bus_up.set(1);
                Arc::new(LocalBroker::new(hub.clone()))
            }
            Some(redis) => redis.start(hub.clone()),
        };
        let semantic = match embedder {
            None => None,
            Some(embedder) => {
                let semantic = Arc::new(search::Semantic::new(
                    embedder,
                    config.near_duplicate,
                    metrics.clone(),
                ));
                // Searchable from the first request: the stored vectors are loaded now.
                let n = semantic.index.refresh(&store).await?;
                tracing::info!(model = %semantic.model(), vectors = n, "semantic search on");
                Some(semantic)
            }
        };
        let service = Arc::new(Service {
            store,
            keys,
            bus,
            limits,
            metrics: metrics.clone(),
            token_ttl: config.token_ttl,
            open_signup: config.open_signup,
            guard: Arc::new(abuse::Guard::new(
                &config.limits,
                config.rate_limits == RateLimitMode::Default,
            )),
            semantic,
        });
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        Ok(App {
            service,
            hub,
            metrics,
            config: Arc::new(config),
            listener,
            leaving: watch::channel(false).0,
            draining: watch::channel(false).0,
            bus_lost: watch::channel(false).0,
            egress,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then leaves service in two steps. First `/readyz`
    /// answers 503 while everything else is served as before, for the drain grace: a load
    /// balancer's health checks take the replica out of rotation meanwhile. Then it drains:
    /// new connections are refused, sessions close with 1012 (their clients reconnect through
    /// the balancer to a replica still in rotation), in-flight requests finish, all within
    /// the drain timeout.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = http::AppState {
            service: self.service.clone(),
            hub: self.hub.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            leaving: self.leaving.subscribe(),
            draining: self.draining.subscribe(),
            bus_lost: self.bus_lost.subscribe(),
        };
        let pruner = tokio::spawn(prune_history(self.service.store.clone()));
        let bus_watch = tokio::spawn(bus_watch::run(
            self.service.bus.clone(),
            self.config.bus_loss_grace,
            self.bus_lost.clone(),
        ));
        memory::return_large_blocks();
        let trimmer = tokio::spawn(memory::trim_after_waves(self.metrics.clone()));
        let pacer = tokio::spawn(self.hub.pacer.clone().run(self.metrics.clone()));
        let watcher = tokio::spawn(revocation_watch::run(
            self.service.store.clone(),
            self.hub.clone(),
        ));
        // Stops when the replica starts draining: from then on it only finishes requests.
        let indexer = self.service.semantic.clone().map(|semantic| {
            let indexer = search::indexer::Indexer::new(
                self.service.store.clone(),
                semantic,
                self.metrics.clone(),
                self.config.index_yield_share,
            );
            tokio::spawn(indexer.run(self.draining.subscribe()))
        });
        // The demo agents dial this replica's own address; they stop when draining begins.
        let demo = self.config.demo.then(|| {
            tokio::spawn(demo::run(
                self.service.clone(),
                self.local_addr(),
                self.draining.subscribe(),
            ))
        });
        let app = http::router(state);
        let drain_timeout = self.config.drain_timeout;
        let mut server = tokio::spawn(server::serve(
            self.listener,
            app,
            self.config.limits.timeouts(),
            self.draining.subscribe(),
            self.metrics.clone(),
        ));
        shutdown.await;
        let _ = self.leaving.send(true);
        let grace = self.config.drain_grace;
        if !grace.is_zero() {
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "leaving rotation: /readyz answers 503, serving on for the drain grace"
            );
            tokio::time::sleep(grace).await;
        }
        tracing::info!("draining: closing sessions with 1012");
        // Every session's reader and every connection watch this flag: sessions close with
        // 1012, connections finish their request and close.
        let _ = self.draining.send(true);
        let result = match tokio::time::timeout(drain_timeout, &mut server).await {
            Ok(_) => Ok(()),
            Err(_) => {
                tracing::warn!("drain timeout reached; exiting with connections still open");
                server.abort();
                Ok(())
            }
        };
        // Upgraded WebSocket connections are not the HTTP server's to wait for: give sessions
        // the drain time to finish their command, send their 1012 and go.
        if tokio::time::timeout(drain_timeout, self.hub.sessions_ended())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; exiting with sessions still open");
        }
        bus_watch.abort();
        self.service.bus.close().await;
        pruner.abort();
        trimmer.abort();
        pacer.abort();
        watcher.abort();
        if let Some(i) = indexer {
            i.abort();
        }
        if let Some(mut d) = demo
            && tokio::time::timeout(Duration::from_secs(2), &mut d)
                .await
                .is_err()
        {
            d.abort();
        }
        self.service.store.close().await;
        // Last: writers still sending their sessions' 1012 run there until now.
        drop(self.egress);
        result
    }

    /// Starts serving in the background (tests): returns the address and a handle whose
    /// `shutdown` drains the replica.
    pub fn spawn(self) -> RunningApp {
        let addr = self.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = self.service.clone();
        let task = tokio::spawn(self.run(async move {
            let _ = rx.await;
        }));
        RunningApp {
            addr,
            service,
            stop: Some(tx),
            task,
        }
    }
}

pub struct RunningApp {
    pub addr: SocketAddr,
    pub service: Arc<Service>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningApp {
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Reads the model (about 90 MB for MiniLM) off the runtime's workers.
async fn load_embedder(dir: std::path::PathBuf) -> Result<search::embedding::Embedder, StartError> {
    let started = std::time::Instant::now();
    let embedder = tokio::task::spawn_blocking(move || search::embedding::Embedder::load(&dir))
        .await
        .map_err(|e| search::embedding::EmbedError::Task(e.to_string()))??;
    tracing::info!(
        model = embedder.model_id(),
        dim = embedder.dim(),
        load_ms = started.elapsed().as_millis() as u64,
        "embedding model loaded"
    );
    Ok(embedder)
}

/// History is kept for at least the last 10,000 events or 24 hours per channel.
async fn prune_history(store: Store) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let cutoff = clock::now_ms() - 24 * 3600 * 1000;
        match store.prune_events(10_000, cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned event history"),
            Err(e) => tracing::warn!(error = %e, "history pruning failed"),
        }
    }
}

/// A Service for one-shot operator commands: the same store and keys as `serve`, an
/// in-process bus (serving replicas learn of revocations through the audit log watcher).
pub async fn admin_service(
    database_url: &str,
    secrets_dir: &std::path::Path,
) -> Result<Service, StartError> {
    let (store, keys) = open_store_and_keys(database_url, secrets_dir).await?;
    Ok(Service {
        store,
        keys: Arc::new(keys),
        bus: Arc::new(LocalBroker::without_sessions()),
        limits: RateLimiter::new(false),
        metrics: Arc::new(Metrics::default()),
        token_ttl: Duration::from_secs(600),
        open_signup: false,
        guard: Arc::new(abuse::Guard::new(&abuse::Limits::defaults(), true)),
        semantic: None,
    })
}
