//! Turns at the model, one forward pass at a time, requests first: a query or a new post
//! waits for the pass that is running, never behind the indexer's queue of them.

use std::sync::{Condvar, Mutex, MutexGuard};

/// Who asks for a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A request someone waits for (a query, a post's near-duplicate check).
    Request,
    /// The indexer: goes only when no request waits.
    Background,
}

#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    running: bool,
    requests_waiting: usize,
}

/// Held through one forward pass; the next waiter goes when it drops.
pub struct Turn<'a>(&'a Gate);

impl Gate {
    /// Blocks until it is `who`'s turn.
    pub fn enter(&self, who: Priority) -> Turn<'_> {
        let mut s = self.lock();
        if who == Priority::Request {
            s.requests_waiting += 1;
        }
        while s.running || (who == Priority::Background && s.requests_waiting > 0) {
            s = self
                .changed
                .wait(s)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if who == Priority::Request {
            s.requests_waiting -= 1;
        }
        s.running = true;
        Turn(self)
    }

    // Nothing is ever left half-changed under this lock, so a panic elsewhere while it was
    // held leaves a valid state.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.lock().running = false;
        self.0.changed.notify_all();
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
    fn a_request_goes_before_background_work_that_waited_longer() {
        let gate = Arc::new(Gate::default());
        let (got, order) = mpsc::channel();
        let first = waiter(&gate, Priority::Background, "running", &got);
        assert_eq!(order.recv().unwrap(), "running");
        let bg = waiter(&gate, Priority::Background, "background", &got);
        std::thread::sleep(Duration::from_millis(50));
        let rq = waiter(&gate, Priority::Request, "request", &got);
        std::thread::sleep(Duration::from_millis(50));
        // Nobody gets in beside the running pass.
        assert!(order.try_recv().is_err());
        drop(first);
        assert_eq!(order.recv().unwrap(), "request");
        assert!(order.recv_timeout(Duration::from_millis(50)).is_err());
        drop(rq);
        assert_eq!(order.recv().unwrap(), "background");
        drop(bg);
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
