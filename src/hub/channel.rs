//! One channel's place in its event stream on this replica: the lifecycle that turns events
//! arriving in any order (two publishers racing, two replicas) into deliveries in `seq`
//! order with no gap and no duplicate.
//!
//! ```text
//!            claim_start                 start / start_at_first_parked
//!   Unknown ────────────▶ Starting ──────────────────────────────────▶ Live ◀─┐
//!      ▲                     │                                          │     │ take_gap_fill
//!      └─────────────────────┘ start_failed        an event past a gap  ▼     │
//!                                                                     Filling ┘
//! ```
//!
//! Events that arrive ahead of the next seq are parked; in every phase but `Live` and
//! `Filling` all of them are. The Hub performs what a transition asks for (a gap fill, a
//! retry) and does the I/O; nothing here waits.

use crate::bus::Event;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Nobody knows where the stream stands, nor is finding out: a new channel, or one whose
    /// start failed and waits for a retry or the next subscriber.
    Unknown,
    /// One party finds out where the stream stands: a subscriber reading the Store, or the
    /// firehose letting early arrivals come in. Others wait for it (see `started`).
    Starting,
    /// Delivering in order; `next` is the seq delivered next.
    Live { next: u64 },
    /// Live, with events parked behind a gap and a fill from the Store scheduled.
    Filling { next: u64 },
}

/// What the Hub must do once a transition released what it could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(super) enum Then {
    Nothing,
    /// A gap opened: fill it from the Store after `GAP_WAIT` unless it closes by itself.
    ScheduleGapFill,
}

pub(super) struct Sequence {
    phase: Phase,
    /// Events that arrived ahead of the next seq, or before the start.
    parked: BTreeMap<u64, Event>,
    /// Woken when the channel leaves `Starting`.
    started: Arc<Notify>,
    /// Where the stream stood at the last sweep (or when it went live).
    swept_at: Option<u64>,
}

impl Default for Sequence {
    fn default() -> Sequence {
        Sequence::with_phase(Phase::Unknown)
    }
}

impl Sequence {
    /// A channel the firehose alone follows, starting at the lowest seq that arrives within
    /// `GAP_WAIT` (see `start_at_first_parked`).
    pub(super) fn starting() -> Sequence {
        Sequence::with_phase(Phase::Starting)
    }

    fn with_phase(phase: Phase) -> Sequence {
        Sequence {
            phase,
            parked: BTreeMap::new(),
            started: Arc::new(Notify::new()),
            swept_at: None,
        }
    }

    #[cfg(test)]
    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the next seq is known.
    pub(super) fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live { .. } | Phase::Filling { .. })
    }

    pub(super) fn is_starting(&self) -> bool {
        self.phase == Phase::Starting
    }

    /// Woken when the channel leaves `Starting`.
    pub(super) fn started(&self) -> Arc<Notify> {
        self.started.clone()
    }

    /// Unknown -> Starting: whether the caller is now the one to find the start.
    pub(super) fn claim_start(&mut self) -> bool {
        let claimed = self.phase == Phase::Unknown;
        if claimed {
            self.phase = Phase::Starting;
        }
        claimed
    }

    /// Starting -> Unknown: the start could not be read.
    pub(super) fn start_failed(&mut self) {
        if self.phase == Phase::Starting {
            self.phase = Phase::Unknown;
        }
    }

    /// Starting -> Live after `last`, the last seq committed when the start was read:
    /// everything up to it is history, everything after it is delivered.
    pub(super) fn start(&mut self, last: u64, deliver: impl FnMut(Event)) -> Then {
        if self.phase != Phase::Starting {
            return Then::Nothing;
        }
        self.parked = self.parked.split_off(&(last + 1));
        self.go_live(Some(last + 1), deliver)
    }

    /// Starting -> Live at the lowest parked seq (the firehose's start), or back to Unknown
    /// if nothing is parked.
    pub(super) fn start_at_first_parked(&mut self, deliver: impl FnMut(Event)) -> Then {
        if self.phase != Phase::Starting {
            return Then::Nothing;
        }
        let first = self.parked.keys().next().copied();
        self.go_live(first, deliver)
    }

    fn go_live(&mut self, next: Option<u64>, deliver: impl FnMut(Event)) -> Then {
        self.phase = match next {
            Some(next) => Phase::Live { next },
            None => Phase::Unknown,
        };
        self.swept_at = self.resume_after();
        let then = self.release(deliver);
        self.started.notify_waiters();
        then
    }

    /// An event arrives: delivered if it is next, with whatever it unblocks; parked if it
    /// is early or the start is unknown; dropped if it was delivered already.
    pub(super) fn arrive(&mut self, event: Event, deliver: impl FnMut(Event)) -> Then {
        if self.next().is_some_and(|n| event.seq < n) {
            return Then::Nothing;
        }
        self.parked.insert(event.seq, event);
        self.release(deliver)
    }

    /// Filling -> Live: the scheduled fill runs. The seq to read the Store after, if events
    /// are still parked behind the gap.
    pub(super) fn take_gap_fill(&mut self) -> Option<u64> {
        let Phase::Filling { next } = self.phase else {
            return None;
        };
        self.phase = Phase::Live { next };
        (!self.parked.is_empty()).then(|| next - 1)
    }

    /// The seq to catch up after from the Store when the bus lost messages, once live.
    pub(super) fn resume_after(&self) -> Option<u64> {
        self.next().map(|n| n - 1)
    }

    /// The sweep's question, for the one loss nothing else reveals (a publisher that died
    /// between its commit and its publish): the seq to catch up after if the stream stood
    /// still since the last sweep, or since it went live. A stream that moved would show a
    /// lost event as a gap behind the next one; not reading it spares the Store.
    pub(super) fn quiet_since_last_sweep(&mut self) -> Option<u64> {
        let now = self.resume_after();
        let quiet = now.is_some() && now == self.swept_at;
        self.swept_at = now;
        now.filter(|_| quiet)
    }

    fn next(&self) -> Option<u64> {
        match self.phase {
            Phase::Live { next } | Phase::Filling { next } => Some(next),
            Phase::Unknown | Phase::Starting => None,
        }
    }

    /// Delivers every parked event that is now in order; Live -> Filling when some remain.
    fn release(&mut self, mut deliver: impl FnMut(Event)) -> Then {
        let Some(mut next) = self.next() else {
            return Then::Nothing;
        };
        while let Some(ev) = self.parked.remove(&next) {
            deliver(ev);
            next += 1;
        }
        let gap = !self.parked.is_empty();
        match self.phase {
            Phase::Live { .. } if gap => {
                self.phase = Phase::Filling { next };
                Then::ScheduleGapFill
            }
            Phase::Live { .. } => {
                self.phase = Phase::Live { next };
                Then::Nothing
            }
            _ => {
                self.phase = Phase::Filling { next };
                Then::Nothing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Channel;
    use std::time::Duration;

    fn ev(seq: u64) -> Event {
        Event {
            channel: Channel::topic("t"),
            seq,
            frame: format!("#{seq}").into(),
        }
    }

    /// Runs a transition, returning what it asked for and the seqs it delivered.
    fn run(f: impl FnOnce(&mut dyn FnMut(Event)) -> Then) -> (Then, Vec<u64>) {
        let mut out = Vec::new();
        let then = f(&mut |e: Event| out.push(e.seq));
        (then, out)
    }

    fn live_at(next: u64) -> Sequence {
        let mut s = Sequence::default();
        assert!(s.claim_start());
        assert_eq!(s.start(next - 1, |_| {}), Then::Nothing);
        s
    }

    #[test]
    fn only_one_party_claims_the_start_and_a_failed_start_can_be_claimed_again() {
        let mut s = Sequence::default();
        assert_eq!(s.phase(), Phase::Unknown);
        assert!(s.claim_start());
        assert!(s.is_starting());
        assert!(!s.claim_start(), "a start is under way");
        s.start_failed();
        assert_eq!(s.phase(), Phase::Unknown);
        assert!(s.claim_start());
        let mut live = live_at(5);
        assert!(!live.claim_start());
        live.start_failed();
        assert_eq!(live.phase(), Phase::Live { next: 5 });
    }

    #[test]
    fn events_before_the_start_are_parked_and_what_the_start_read_is_dropped() {
        let mut s = Sequence::default();
        assert_eq!(run(|d| s.arrive(ev(3), d)), (Then::Nothing, vec![]));
        assert!(s.claim_start());
        assert_eq!(run(|d| s.arrive(ev(4), d)), (Then::Nothing, vec![]));
        assert_eq!(run(|d| s.arrive(ev(2), d)), (Then::Nothing, vec![]));
        // The Store said 2 was the last committed: 2 is history, 3 and 4 go out.
        assert_eq!(run(|d| s.start(2, d)), (Then::Nothing, vec![3, 4]));
        assert_eq!(s.phase(), Phase::Live { next: 5 });
    }

    #[test]
    fn a_start_with_a_gap_behind_it_asks_for_a_fill() {
        let mut s = Sequence::default();
        assert!(s.claim_start());
        assert_eq!(run(|d| s.arrive(ev(7), d)), (Then::Nothing, vec![]));
        assert_eq!(run(|d| s.start(5, d)), (Then::ScheduleGapFill, vec![]));
        assert_eq!(s.phase(), Phase::Filling { next: 6 });
    }

    #[test]
    fn live_events_go_out_in_order_once_and_an_early_one_asks_for_one_fill() {
        let mut s = live_at(1);
        assert_eq!(run(|d| s.arrive(ev(1), d)), (Then::Nothing, vec![1]));
        assert_eq!(run(|d| s.arrive(ev(1), d)), (Then::Nothing, vec![]));
        assert_eq!(run(|d| s.arrive(ev(3), d)), (Then::ScheduleGapFill, vec![]));
        assert_eq!(s.phase(), Phase::Filling { next: 2 });
        // A fill is scheduled already.
        assert_eq!(run(|d| s.arrive(ev(5), d)), (Then::Nothing, vec![]));
        assert_eq!(run(|d| s.arrive(ev(2), d)), (Then::Nothing, vec![2, 3]));
        assert_eq!(s.phase(), Phase::Filling { next: 4 });
        // The fill runs: 4 is still missing, so it reads the Store after 3.
        assert_eq!(s.take_gap_fill(), Some(3));
        assert_eq!(s.phase(), Phase::Live { next: 4 });
        assert_eq!(run(|d| s.arrive(ev(4), d)), (Then::Nothing, vec![4, 5]));
        assert_eq!(s.phase(), Phase::Live { next: 6 });
    }

    #[test]
    fn a_gap_that_closed_by_itself_needs_no_read() {
        let mut s = live_at(1);
        assert_eq!(run(|d| s.arrive(ev(2), d)), (Then::ScheduleGapFill, vec![]));
        assert_eq!(run(|d| s.arrive(ev(1), d)), (Then::Nothing, vec![1, 2]));
        assert_eq!(s.take_gap_fill(), None);
        assert_eq!(s.phase(), Phase::Live { next: 3 });
        assert_eq!(s.take_gap_fill(), None, "no fill was scheduled");
    }

    #[test]
    fn the_firehose_starts_at_the_lowest_seq_that_came_in_or_not_at_all() {
        let mut s = Sequence::starting();
        assert_eq!(run(|d| s.arrive(ev(9), d)), (Then::Nothing, vec![]));
        assert_eq!(run(|d| s.arrive(ev(8), d)), (Then::Nothing, vec![]));
        assert_eq!(
            run(|d| s.start_at_first_parked(d)),
            (Then::Nothing, vec![8, 9])
        );
        assert_eq!(s.phase(), Phase::Live { next: 10 });
        let mut empty = Sequence::starting();
        assert_eq!(
            run(|d| empty.start_at_first_parked(d)),
            (Then::Nothing, vec![])
        );
        assert_eq!(empty.phase(), Phase::Unknown);
        // Only a start under way is ended by a start.
        assert_eq!(run(|d| s.start(20, d)), (Then::Nothing, vec![]));
        assert_eq!(s.phase(), Phase::Live { next: 10 });
    }

    #[test]
    fn a_resync_catches_up_after_the_last_delivered_seq() {
        let mut s = Sequence::default();
        assert_eq!(s.resume_after(), None);
        assert!(s.claim_start());
        assert_eq!(s.resume_after(), None);
        assert_eq!(s.start(4, |_| {}), Then::Nothing);
        assert_eq!(s.resume_after(), Some(4));
    }

    #[test]
    fn the_sweep_reads_only_a_stream_that_stood_still_for_a_whole_period() {
        let mut s = Sequence::default();
        assert_eq!(s.quiet_since_last_sweep(), None, "nothing to resume from");
        assert!(s.claim_start());
        assert_eq!(s.start(4, |_| {}), Then::Nothing);
        // Quiet since it went live: a lost event 5 shows only in the Store.
        assert_eq!(s.quiet_since_last_sweep(), Some(4));
        assert_eq!(s.quiet_since_last_sweep(), Some(4));
        assert_eq!(run(|d| s.arrive(ev(5), d)), (Then::Nothing, vec![5]));
        // It moved since the last sweep: not read now, read at the next if it stays still.
        assert_eq!(s.quiet_since_last_sweep(), None);
        assert_eq!(s.quiet_since_last_sweep(), Some(5));
    }

    #[tokio::test]
    async fn waiters_are_woken_when_the_start_ends() {
        let mut s = Sequence::default();
        assert!(s.claim_start());
        let started = s.started();
        let woken = started.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        s.start_failed();
        assert!(
            tokio::time::timeout(Duration::from_millis(20), woken.as_mut())
                .await
                .is_err(),
            "a failed start leaves waiters waiting for a retry"
        );
        assert!(s.claim_start());
        assert_eq!(s.start(0, |_| {}), Then::Nothing);
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("the start wakes its waiters");
    }
}
