//! The egress runtime: the threads that queue events for sessions and write them to their
//! sockets, apart from the ones that read commands and persist posts.
//!
//! Why apart: a fan-out to a thousand subscribers wakes a thousand writers at once. On one
//! runtime they queue in front of everything else, so each step of the next post (its
//! reader, each database round trip, the fan-out) waits behind all of them; posts slow
//! down, writers find fewer events per wake-up, every frame costs a syscall of its own, and
//! throughput collapses. With writers on their own threads the publishing path stays
//! short, and the writers' own queue batches naturally: the longer the queue, the more
//! events each writer finds when its turn comes. Measured with `carapace bench` (1,000
//! subscribers, 2 cores): 244k deliveries/s with no pacing gap on one runtime, 680k-780k
//! with writers here. The fan-out runs here too (see `hub`), so that a frame's reference
//! count and a session queue's ends stay on the threads that use them.

use tokio::runtime::{Builder, Handle, Runtime};

/// Owns the runtime; dropping it stops the writers still on it.
pub struct Egress {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Egress {
    /// Starts `threads` writer threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Egress> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("carapace-egress")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Egress {
            runtime: Some(runtime),
            handle,
        })
    }

    /// Where session writers are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The default thread count: half the cores, at least one. One per core gained ~3% in
    /// the 1,000-subscriber fan-out on two cores (within run-to-run noise) but cost ~30% of
    /// the `cluster` scenario's throughput, three replicas sharing those two cores.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get() / 2)
            .unwrap_or(1)
            .max(1)
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        // Dropped from async code when the replica stops; a blocking shutdown would panic.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
