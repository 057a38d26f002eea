//! What of each queued item goes out, in order: a session's tracks, one per subscribed
//! channel, hold live events back while history is replayed and drop what was sent already,
//! so that each channel goes out in `seq` order with no gap and no duplicate.

use super::Outbound;
use crate::bus::Event;
use crate::protocol::Channel;
use crate::websocket::FrameWriter;
use axum::extract::ws::Utf8Bytes;

/// The writer's tracks, one per subscribed channel. At most `MAX_SUBSCRIPTIONS` and
/// usually one or two: a scan compares a short string where a hash map hashed it for
/// every delivered event.
#[derive(Default)]
pub(super) struct Tracks {
    tracks: Vec<(Channel, Track)>,
    /// Topics the session left while it watches the firehose, with the last seq their own
    /// track sent. The fan-out queues an event's direct copies before its firehose copies,
    /// so an unsubscribe can fall between the two: the firehose copy of an event sent
    /// already would then go out again. Dropped once the firehose has passed it.
    firehose_floors: Vec<(Channel, u64)>,
}

impl Tracks {
    fn position(&self, channel: &Channel) -> Option<usize> {
        self.tracks.iter().position(|(c, _)| c == channel)
    }

    fn follows(&self, channel: &Channel) -> bool {
        self.position(channel).is_some()
    }

    fn get_mut(&mut self, channel: &Channel) -> Option<&mut Track> {
        let i = self.position(channel)?;
        Some(&mut self.tracks[i].1)
    }

    fn insert(&mut self, channel: Channel, track: Track) {
        self.firehose_floors.retain(|(c, _)| *c != channel);
        if channel == Channel::Firehose {
            self.firehose_floors.clear();
        }
        match self.get_mut(&channel) {
            Some(t) => *t = track,
            None => self.tracks.push((channel, track)),
        }
    }

    fn remove(&mut self, channel: &Channel) {
        let Some(i) = self.position(channel) else {
            return;
        };
        let (channel, track) = self.tracks.swap_remove(i);
        if channel == Channel::Firehose {
            self.firehose_floors.clear();
        } else if matches!(channel, Channel::Topic(_)) && self.follows(&Channel::Firehose) {
            self.firehose_floors.push((channel, track.last));
        }
    }

    /// Whether the firehose copy of `seq` on `channel` goes out: not if the channel's own
    /// track sent it before the session left the channel.
    fn firehose_admits(&mut self, channel: &Channel, seq: u64) -> bool {
        let Some(i) = self.firehose_floors.iter().position(|(c, _)| c == channel) else {
            return true;
        };
        if seq <= self.firehose_floors[i].1 {
            return false;
        }
        self.firehose_floors.swap_remove(i);
        true
    }
}

/// Per-channel delivery state in the writer.
struct Track {
    /// Highest seq sent on this channel.
    last: u64,
    /// Live events held while history is replayed.
    held: Option<Vec<Event>>,
}

impl Track {
    /// Whether an event with `seq` goes out: only past what was sent, so that replay, held
    /// and live events overlap without duplicates.
    fn admit(&mut self, seq: u64) -> bool {
        let new = seq > self.last;
        if new {
            self.last = seq;
        }
        new
    }
}

/// Where `route` puts the frames that go out.
pub(super) trait FrameOut {
    fn text(&mut self, frame: &Utf8Bytes);
    fn pong(&mut self, payload: &[u8]);
}

impl FrameOut for FrameWriter {
    fn text(&mut self, frame: &Utf8Bytes) {
        FrameWriter::text(self, frame.as_str());
    }

    fn pong(&mut self, payload: &[u8]) {
        FrameWriter::pong(self, payload);
    }
}

/// Decides what of one queue item goes out, in order.
pub(super) fn route(item: Outbound, tracks: &mut Tracks, out: &mut impl FrameOut) {
    match item {
        Outbound::Frame(f) => out.text(&f),
        Outbound::Pong(p) => out.pong(&p),
        Outbound::Subscribed { channel, replay } => {
            tracks.insert(
                channel,
                Track {
                    last: 0,
                    held: replay.then(Vec::new),
                },
            );
        }
        Outbound::Unsubscribed(channel) => {
            tracks.remove(&channel);
        }
        Outbound::Events {
            events,
            via_firehose,
        } => {
            let Some(channel) = events.first().map(|e| &e.channel) else {
                return;
            };
            if via_firehose {
                // Firehose copies of a channel the session follows directly are dropped (the
                // direct subscription carries them, in order), and so are those of a fan-out
                // begun before the session left the firehose.
                if !tracks.follows(channel) && tracks.follows(&Channel::Firehose) {
                    for e in events.iter() {
                        if tracks.firehose_admits(channel, e.seq) {
                            out.text(&e.frame);
                        }
                    }
                }
                return;
            }
            let Some(t) = tracks.get_mut(channel) else {
                return;
            };
            match &mut t.held {
                Some(held) => held.extend(events.iter().cloned()),
                None => {
                    for e in events.iter() {
                        if t.admit(e.seq) {
                            out.text(&e.frame);
                        }
                    }
                }
            }
        }
        Outbound::Replay {
            channel,
            events,
            floor,
            done,
        } => {
            let Some(t) = tracks.get_mut(&channel) else {
                return;
            };
            if let Some(f) = floor {
                t.last = f;
            }
            let held = if done { t.held.take() } else { None };
            for e in events.into_iter().chain(held.into_iter().flatten()) {
                if t.admit(e.seq) {
                    out.text(&e.frame);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    impl FrameOut for Vec<Utf8Bytes> {
        fn text(&mut self, frame: &Utf8Bytes) {
            self.push(frame.clone());
        }

        fn pong(&mut self, _: &[u8]) {}
    }

    fn event(channel: &Channel, seq: u64) -> Outbound {
        Outbound::Events {
            events: Arc::from([Event {
                channel: channel.clone(),
                seq,
                frame: format!("{channel}#{seq}").into(),
            }]),
            via_firehose: true,
        }
    }

    fn subscribed(channel: &Channel) -> Outbound {
        Outbound::Subscribed {
            channel: channel.clone(),
            replay: false,
        }
    }

    #[test]
    fn firehose_copies_reach_only_sessions_that_still_watch_it() {
        let (t, other) = (Channel::topic("t"), Channel::topic("other"));
        let mut tracks = Tracks::default();
        let mut out = Vec::new();
        route(subscribed(&Channel::Firehose), &mut tracks, &mut out);
        route(subscribed(&t), &mut tracks, &mut out);
        route(event(&other, 1), &mut tracks, &mut out);
        // The direct subscription carries `t`; its firehose copy is not sent twice.
        route(event(&t, 1), &mut tracks, &mut out);
        assert_eq!(out, vec![Utf8Bytes::from("topic:other#1")]);
        // A fan-out that began before the session left the firehose delivers nothing after.
        route(
            Outbound::Unsubscribed(Channel::Firehose),
            &mut tracks,
            &mut out,
        );
        route(event(&other, 2), &mut tracks, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn leaving_a_topic_the_firehose_also_carries_sends_each_of_its_events_once() {
        let t = Channel::topic("t");
        let direct = |seq: u64| Outbound::Events {
            events: Arc::from([Event {
                channel: t.clone(),
                seq,
                frame: format!("#{seq}").into(),
            }]),
            via_firehose: false,
        };
        let frames = |out: &[Utf8Bytes]| out.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        let mut tracks = Tracks::default();
        let mut out = Vec::new();
        route(subscribed(&t), &mut tracks, &mut out);
        route(subscribed(&Channel::Firehose), &mut tracks, &mut out);
        route(direct(5), &mut tracks, &mut out);
        route(event(&t, 5), &mut tracks, &mut out);
        // The unsubscribe falls between event 6's direct copy and its firehose copy.
        route(direct(6), &mut tracks, &mut out);
        route(Outbound::Unsubscribed(t.clone()), &mut tracks, &mut out);
        route(event(&t, 6), &mut tracks, &mut out);
        // Event 7 was fanned out before the hub heard of the unsubscribe: its direct copy
        // comes after it, and its firehose copy carries it.
        route(direct(7), &mut tracks, &mut out);
        route(event(&t, 7), &mut tracks, &mut out);
        route(event(&t, 8), &mut tracks, &mut out);
        assert_eq!(frames(&out), ["#5", "#6", "topic:t#7", "topic:t#8"]);
        assert!(
            tracks.firehose_floors.is_empty(),
            "kept no longer than needed"
        );
    }

    #[test]
    fn grouped_events_skip_what_was_sent_and_wait_behind_a_replay() {
        let t = Channel::topic("t");
        let events = |seqs: &[u64]| -> Vec<Event> {
            seqs.iter()
                .map(|&seq| Event {
                    channel: t.clone(),
                    seq,
                    frame: format!("#{seq}").into(),
                })
                .collect()
        };
        let group = |seqs: &[u64]| Outbound::Events {
            events: events(seqs).into(),
            via_firehose: false,
        };
        let frames = |out: &[Utf8Bytes]| out.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        let mut tracks = Tracks::default();
        let mut out = Vec::new();
        route(
            Outbound::Subscribed {
                channel: t.clone(),
                replay: true,
            },
            &mut tracks,
            &mut out,
        );
        // Live events during the replay wait; the replay's last page releases the ones after it.
        route(group(&[3, 4]), &mut tracks, &mut out);
        assert!(out.is_empty());
        route(
            Outbound::Replay {
                channel: t.clone(),
                events: events(&[2, 3]),
                floor: Some(1),
                done: true,
            },
            &mut tracks,
            &mut out,
        );
        assert_eq!(frames(&out), ["#2", "#3", "#4"]);
        // A group that overlaps what was sent adds only what is new.
        route(group(&[4, 5, 6]), &mut tracks, &mut out);
        assert_eq!(frames(&out), ["#2", "#3", "#4", "#5", "#6"]);
    }
}
