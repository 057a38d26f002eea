//! Sentence embeddings in-process: `Embedder` loads a sentence-transformers model directory
//! (all-MiniLM-L6-v2 is the reference) once at start and turns texts into unit vectors, with
//! nothing fetched over the network. It owns the model and when it runs; what is embedded,
//! stored and ranked belongs to the rest of `search`.
//!
//! The model is CPU-bound. Its passes run on threads of their own, one per core: requests'
//! at normal priority, the indexer's in the kernel's idle scheduling class, so that the
//! indexer only ever uses CPU that neither the hub nor a query wants (it lags instead). A
//! request never waits for the indexer, and the indexer starts no pass while a request's
//! pass runs (`gate`). Requests queue on a semaphore, not on blocking threads, so neither the
//! runtime's workers nor tokio's blocking pool fill up with them.

mod bert;
mod gate;
mod layout;
mod model;

pub use gate::Priority;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::sync::Semaphore;

/// Unit-length sentence embedding (f32, dimension `Embedder::dim()`, 384 for MiniLM-L6).
pub type Vector = Vec<f32>;

#[derive(Debug, Error)]
pub enum EmbedError {
    #[error("embedding model: {dir} is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("embedding model: {file} is missing from {dir}")]
    MissingFile { dir: PathBuf, file: String },
    #[error("embedding model: cannot read {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("embedding model: {file} is malformed: {reason}")]
    Malformed { file: PathBuf, reason: String },
    #[error("embedding failed: {0}")]
    Model(String),
    #[error("the embedding task did not finish: {0}")]
    Task(String),
    #[error("the model is busy: the request went on without it")]
    Busy,
}

/// Padded word pieces in one of the indexer's forward passes. The indexer looks at the gate
/// between passes, and on this model larger passes hardly raise its throughput (a CPU does
/// about as many pieces a second either way), so passes stay short: one or two posts, tens
/// of milliseconds on two cores. (Requests embed one text.)
const BACKGROUND_PIECES: usize = 128;

/// Loaded once at start (App::build), shared as `Arc<Embedder>`.
pub struct Embedder {
    gated: Arc<Gated>,
    model_id: String,
    /// Async callers queue here, not on blocking threads: at most one of them holds a
    /// blocking thread at a time. The permit goes with the blocking task, so a caller that
    /// stops waiting (a deadline) does not let a second batch onto a blocking thread beside it.
    running: Arc<Semaphore>,
    /// Callers of `embed` waiting or running now.
    queued: Arc<AtomicUsize>,
    /// The kernel's thread ids of the indexer's pool, as its threads start.
    background_threads: Arc<Mutex<Vec<i32>>>,
}

/// The model, whose turns the gate hands out, and the threads its passes run on.
struct Gated {
    model: model::Model,
    gate: gate::Gate,
    requests: rayon::ThreadPool,
    background: rayon::ThreadPool,
}

impl Gated {
    /// Blocks the calling thread until `texts` are embedded, on `who`'s threads and turns.
    fn embed(&self, texts: &[String], who: Priority) -> Result<Vec<Vector>, EmbedError> {
        let (pool, pieces) = match who {
            Priority::Request => (&self.requests, model::BATCH_PIECES),
            Priority::Background => (&self.background, BACKGROUND_PIECES),
        };
        // The kernels split each pass over the pool they are called from.
        pool.install(|| self.model.embed(texts, pieces, || self.gate.enter(who)))
    }
}

/// How the kernel schedules a pool's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Like the hub's own threads.
    Normal,
    /// Only when no normal thread wants the CPU (Linux `SCHED_IDLE`).
    Idle,
}

/// A pool of one thread per core for the model's passes; each thread adds its kernel id to
/// `ids` as it starts.
fn pool(
    name: &'static str,
    class: Class,
    ids: Arc<Mutex<Vec<i32>>>,
) -> Result<rayon::ThreadPool, EmbedError> {
    rayon::ThreadPoolBuilder::new()
        .thread_name(move |i| format!("carapace-{name}-{i}"))
        .start_handler(move |_| {
            if class == Class::Idle {
                idle_class();
            }
            if let Some(tid) = thread_id() {
                ids.lock().unwrap_or_else(|e| e.into_inner()).push(tid);
            }
        })
        .build()
        .map_err(|e| EmbedError::Model(format!("cannot start the model's threads: {e}")))
}

/// Moves the calling thread into the idle scheduling class (Linux: per thread), or, where
/// that is refused, to the lowest priority of the normal class.
fn idle_class() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: both calls change only this thread's scheduling (0 and its own id: the
        // calling thread); `param` outlives the call.
        unsafe {
            if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0
                && let Some(tid) = thread_id()
            {
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
            }
        }
    }
}

/// The calling thread's id in the kernel (`/proc/self/task/<id>`), on Linux.
pub(crate) fn thread_id() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid takes no argument and cannot fail.
        Some(unsafe { libc::syscall(libc::SYS_gettid) } as i32)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_id", &self.model_id)
            .field("dim", &self.dim())
            .finish()
    }
}

impl Embedder {
    /// Reads and checks the directory; a missing or malformed file is an error naming it.
    pub fn load(dir: &Path) -> Result<Embedder, EmbedError> {
        let layout = layout::Layout::read(dir)?;
        let model_id = layout.model_id.clone();
        let model = model::Model::load(layout)?;
        let background_threads = Arc::new(Mutex::new(Vec::new()));
        Ok(Embedder {
            gated: Arc::new(Gated {
                model,
                gate: gate::Gate::default(),
                requests: pool("model", Class::Normal, Arc::default())?,
                background: pool("indexer", Class::Idle, background_threads.clone())?,
            }),
            model_id,
            running: Arc::new(Semaphore::new(1)),
            queued: Arc::new(AtomicUsize::new(0)),
            background_threads,
        })
    }

    /// The model's name, e.g. "all-MiniLM-L6-v2".
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn dim(&self) -> usize {
        self.gated.model.dim()
    }

    /// The kernel's ids of the threads the indexer's passes run on (empty off Linux), so that
    /// their CPU time can be told from the hub's own.
    pub fn background_threads(&self) -> Vec<i32> {
        self.background_threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Callers of `embed` queued or running now (not the indexer's own thread).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// One unit vector per text, in order, for a request. A text longer than the model takes
    /// is cut, not refused (the model sees its first 256 word pieces for MiniLM).
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vector>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let queued = Queued::enter(&self.queued);
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| EmbedError::Task(e.to_string()))?;
        let gated = self.gated.clone();
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _queued = queued;
            gated.embed(&texts, Priority::Request)
        })
        .await
        .map_err(|e| EmbedError::Task(e.to_string()))?
    }

    /// `embed` blocking the caller's thread, for callers that are already off the runtime:
    /// the indexer (`Priority::Background`), or a tool.
    pub fn embed_blocking(
        &self,
        texts: &[String],
        who: Priority,
    ) -> Result<Vec<Vector>, EmbedError> {
        self.gated.embed(texts, who)
    }
}

/// Counts a caller of `embed` from its call until its batch has run (or it gave up).
struct Queued(Arc<AtomicUsize>);

impl Queued {
    fn enter(n: &Arc<AtomicUsize>) -> Queued {
        n.fetch_add(1, Ordering::Relaxed);
        Queued(n.clone())
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
