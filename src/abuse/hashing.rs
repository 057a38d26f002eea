//! Password hashing on a few dedicated threads behind a short queue. argon2 takes ~19 MiB
//! and tens of milliseconds per hash: run on an unbounded pool, a burst of logins costs
//! memory in proportion to the burst and keeps it. Here at most `threads` hashes run at
//! once, at most `queue` wait, none waits longer than `wait`; the rest are refused at once.

use std::sync::mpsc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::oneshot;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Busy {
    #[error("too many password checks at once; try again shortly")]
    QueueFull,
    #[error("password checks are backed up; try again shortly")]
    TimedOut,
}

type Job = Box<dyn FnOnce(Instant) + Send>;

pub struct Hasher {
    jobs: mpsc::SyncSender<Job>,
    wait: Duration,
}

impl Hasher {
    pub fn start(threads: usize, queue: usize, wait: Duration) -> Hasher {
        let (tx, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("carapace-hash-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(Instant::now()),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Hasher { jobs: tx, wait }
    }

    /// Runs `f` on a hashing thread, or says why not.
    pub async fn run<T, F>(&self, f: F) -> Result<T, Busy>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + self.wait;
        let job: Job = Box::new(move |started| {
            // Waited past its time: its caller has already been told no.
            if started <= deadline {
                let _ = tx.send(f());
            }
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => return Err(Busy::QueueFull),
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(Busy::TimedOut),
        }
        // The job either starts by the deadline (and then finishes) or drops its sender.
        rx.await.map_err(|_| Busy::TimedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_stale_job_is_skipped() {
        let h = std::sync::Arc::new(Hasher::start(1, 1, Duration::from_millis(100)));
        let slow = {
            let h = h.clone();
            tokio::spawn(async move {
                h.run(|| std::thread::sleep(Duration::from_millis(300)))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = {
            let h = h.clone();
            tokio::spawn(async move { h.run(|| 1).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(h.run(|| 2).await, Err(Busy::QueueFull));
        assert_eq!(slow.await.unwrap(), Ok(()));
        assert_eq!(queued.await.unwrap(), Err(Busy::TimedOut));
        assert_eq!(h.run(|| 3).await, Ok(3));
    }
}
