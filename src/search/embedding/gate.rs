//! Turns at the model: a request (a query, a new post's check) never waits for the indexer,
//! and the indexer starts a pass only while no request's pass runs. A request that comes
//! during one of the indexer's passes runs beside it: the indexer's threads are in the
//! kernel's idle class (`embedding`), so the request's take the CPU from them at once.

use std::sync::{Condvar, Mutex, MutexGuard};

/// Who asks for a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A request someone waits for (a query, a post's near-duplicate check).
    Request,
    /// The indexer: goes only when no request's pass runs.
    Background,
}

#[derive(Default)]
pub struct Gate {
    /// Requests' passes running now.
    requests: Mutex<usize>,
    idle: Condvar,
}

/// Held through one forward pass.
pub struct Turn<'a> {
    gate: &'a Gate,
    who: Priority,
}

impl Gate {
    /// Returns at once for a request; blocks the indexer until no request's pass runs.
    pub fn enter(&self, who: Priority) -> Turn<'_> {
        let mut requests = self.lock();
        match who {
            Priority::Request => *requests += 1,
            Priority::Background => {
                while *requests > 0 {
                    requests = self
                        .idle
                        .wait(requests)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
        Turn { gate: self, who }
    }

    // Nothing is ever left half-changed under this lock, so a panic elsewhere while it was
    // held leaves a valid state.
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.who == Priority::Request {
            let mut requests = self.gate.lock();
            *requests -= 1;
            if *requests == 0 {
                self.gate.idle.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Starts a thread that waits for a turn as `who` and reports `name` once it has it,
    /// then holds the turn until told to let go.
    fn waiter(
        gate: &Arc<Gate>,
        who: Priority,
        name: &'static str,
        got: &mpsc::Sender<&'static str>,
    ) -> mpsc::Sender<()> {
        let (release, released) = mpsc::channel::<()>();
        let (gate, got) = (gate.clone(), got.clone());
        std::thread::spawn(move || {
            let _turn = gate.enter(who);
            got.send(name).unwrap();
            let _ = released.recv();
        });
        release
    }

    #[test]
    fn a_request_never_waits_and_the_indexer_waits_for_requests() {
        let gate = Arc::new(Gate::default());
        let (got, order) = mpsc::channel();
        let bg = waiter(&gate, Priority::Background, "background", &got);
        assert_eq!(order.recv().unwrap(), "background");
        // A request goes in beside the indexer's running pass.
        let rq = waiter(&gate, Priority::Request, "request", &got);
        assert_eq!(order.recv().unwrap(), "request");
        drop(bg);
        // The indexer's next pass waits for the request to finish.
        let bg2 = waiter(&gate, Priority::Background, "background again", &got);
        assert!(order.recv_timeout(Duration::from_millis(100)).is_err());
        let rq2 = waiter(&gate, Priority::Request, "second request", &got);
        assert_eq!(order.recv().unwrap(), "second request");
        drop(rq);
        assert!(order.recv_timeout(Duration::from_millis(100)).is_err());
        drop(rq2);
        assert_eq!(order.recv().unwrap(), "background again");
        drop(bg2);
    }

    #[test]
    fn turns_survive_a_panic_inside_one() {
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        let crashed = std::thread::spawn(move || {
            let _turn = g.enter(Priority::Request);
            panic!("inside the model");
        })
        .join();
        assert!(crashed.is_err());
        drop(gate.enter(Priority::Background));
        drop(gate.enter(Priority::Request));
    }
}
