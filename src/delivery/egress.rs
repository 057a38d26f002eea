//! The egress shards: the threads that queue events for sessions and write them to their
//! sockets, apart from the ones that read commands and persist posts.
//!
//! Why apart: a fan-out to a thousand subscribers wakes a thousand writers at once. On one
//! runtime they queue in front of everything else, so each step of the next post (its
//! reader, each database round trip, the fan-out) waits behind all of them; posts slow
//! down, writers find fewer events per wake-up, every frame costs a syscall of its own, and
//! throughput collapses. With writers on their own threads the publishing path stays
//! short, and the writers' own queue batches naturally: the longer the queue, the more
//! events each writer finds when its turn comes.
//!
//! Each shard is one thread with a current-thread runtime whose `block_on` future is the
//! shard's fan-out (see `hub::fan_out`). Tokio polls that future ahead of the queued tasks
//! (at the latest every `event_interval` task polls), so a new event starts out to every
//! subscriber at once instead of waiting its turn behind the hundreds of writers the
//! previous event woke. A session's writer stays on one shard for life, so a frame's
//! reference count and a session queue's ends stay on the thread that uses them.

use std::future::Future;
use std::pin::Pin;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Main = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Owns the shards; dropping it stops them, and with them the writers still running.
pub struct Egress {
    shards: Vec<Shard>,
}

struct Shard {
    handle: Handle,
    main: Option<oneshot::Sender<Main>>,
    /// Dropped to stop the shard.
    _stop: oneshot::Sender<()>,
}

impl Egress {
    /// Starts `threads` shards (at least one).
    pub fn start(threads: usize) -> std::io::Result<Egress> {
        let shards = (0..threads.max(1))
            .map(|_| Shard::start())
            .collect::<std::io::Result<_>>()?;
        Ok(Egress { shards })
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Hands shard `i` the future it polls first, before its queued tasks; it runs until it
    /// ends or the shard stops. Once per shard: later calls are ignored.
    pub fn drive(&mut self, i: usize, main: impl Future<Output = ()> + Send + 'static) {
        if let Some(tx) = self.shards.get_mut(i).and_then(|s| s.main.take()) {
            let _ = tx.send(Box::pin(main));
        }
    }

    /// One handle per shard, in shard order: where each shard's writers run.
    pub fn handles(&self) -> Vec<Handle> {
        self.shards.iter().map(|s| s.handle.clone()).collect()
    }

    /// The default shard count: half the cores, at least one. The other half is left to
    /// reading commands and persisting posts, and to other replicas sharing the machine:
    /// one shard per core barely helps a lone replica's fan-out and starves its neighbours.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get() / 2)
            .unwrap_or(1)
            .max(1)
    }
}

impl Shard {
    fn start() -> std::io::Result<Shard> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (main_tx, main_rx) = oneshot::channel::<Main>();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("carapace-egress".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(main) = main_rx.await {
                        tokio::select! {
                            _ = main => {}
                            _ = &mut stop_rx => return,
                        }
                    }
                    // The writers keep running until the shard stops.
                    let _ = stop_rx.await;
                });
                // Dropping the runtime here drops the writers still on it.
            })?;
        Ok(Shard {
            handle,
            main: Some(main_tx),
            _stop: stop_tx,
        })
    }
}

/// Spawns `task` on the shard `key` maps to, out of `handles` (the same key, the same shard).
pub fn spawn_on<F>(handles: &[Handle], key: u64, task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handles[shard_of(key, handles.len())].spawn(task)
}

/// The shard of `key` among `shards` shards.
pub fn shard_of(key: u64, shards: usize) -> usize {
    (key % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Signals when dropped, i.e. when the task holding it is dropped with its shard.
    struct Dropped(Option<std::sync::mpsc::Sender<()>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    #[test]
    fn shards_run_their_main_future_and_tasks_and_stop_when_dropped() {
        let mut egress = Egress::start(2).unwrap();
        assert_eq!(egress.shards(), 2);
        let (ran_tx, ran_rx) = std::sync::mpsc::channel();
        for i in 0..2 {
            let tx = ran_tx.clone();
            egress.drive(i, async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
        }
        for _ in 0..2 {
            let name = ran_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(name.as_deref(), Some("carapace-egress"));
        }
        // Keys that map to the same shard run on the same thread, the others elsewhere.
        let handles = egress.handles();
        let (at_tx, at_rx) = std::sync::mpsc::channel();
        for key in [7, 9, 8] {
            let tx = at_tx.clone();
            spawn_on(&handles, key, async move {
                let _ = tx.send((key, std::thread::current().id()));
            });
        }
        let mut at = std::collections::HashMap::new();
        for _ in 0..3 {
            let (key, thread) = at_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            at.insert(key, thread);
        }
        assert_eq!(at[&7], at[&9]);
        assert_ne!(at[&7], at[&8]);
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
        let guard = Dropped(Some(dropped_tx));
        let _task = spawn_on(&handles, 7, async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        assert!(dropped_rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(egress);
        dropped_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a task still running on a shard is dropped with it");
    }
}
