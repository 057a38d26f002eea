//! One WebSocket connection. A reader task decodes frames into commands and answers them in
//! order; a writer task drains a bounded queue of ready-made frames to the socket, holding a
//! channel's live events back while its history is replayed, and dropping duplicates, so
//! that each channel goes out in `seq` order with no gap and no duplicate.

use crate::bus::Event;
use crate::hub::{AgentTag, HISTORY_PAGE, Hub, Outbound, SessionShared};
use crate::metrics::Metrics;
use crate::outbox;
use crate::pacing::FlushPacer;
use crate::protocol::{
    AgentRef, ApiError, Authenticated, Channel, CloseCode, Command, Empty, MAX_SUBSCRIPTIONS,
    Present, Refreshed, RequestId, Subscribed, parse_command, reply_err, reply_ok,
};
use crate::service::{AgentCtx, Service, ServiceError};
use crate::websocket::{FrameReader, FrameWriter, Incoming, ReadError, Socket};
use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// More malformed frames than this within `MALFORMED_WINDOW` closes the session with 4000.
const MALFORMED_LIMIT: usize = 20;
const MALFORMED_WINDOW: Duration = Duration::from_secs(60);
/// The writer stops taking from its queue for one write at this many frames or bytes.
const WRITE_BATCH: usize = 64;
const WRITE_BYTES: usize = 64 * 1024;
/// What a command comes to: a reply to send, or nothing more (it was sent already).
enum Answer {
    Reply(String),
    Sent,
}

/// The reply to `id` carrying `result`, serialized once.
fn answer<T: serde::Serialize>(
    id: &RequestId,
    result: Result<T, ServiceError>,
) -> Result<Answer, ServiceError> {
    result.map(|r| Answer::Reply(reply_ok(id, &r)))
}

/// Everything a session needs from its replica.
#[derive(Clone)]
pub struct SessionDeps {
    pub hub: Arc<Hub>,
    pub service: Arc<Service>,
    pub metrics: Arc<Metrics>,
    pub queue: usize,
    /// See `Config::close_grace`.
    pub close_grace: Duration,
    /// Replica-wide shutdown: sessions close with 1012 when it flips.
    pub draining: watch::Receiver<bool>,
    /// The client's address, for limits on what a session without an agent may do.
    pub client: std::net::IpAddr,
}

/// Runs a session to its end. `agent` is set when the upgrade request carried a valid token.
pub async fn run(socket: Socket, deps: SessionDeps, agent: Option<AgentCtx>) {
    let (tx, rx) = outbox::outbox(deps.queue);
    let shared = SessionShared::new(deps.hub.new_session_id(), tx);
    deps.metrics.sessions.inc();
    let Socket {
        reader: frames,
        writer,
    } = socket;
    let writer = deps.hub.spawn_writer(
        shared.id,
        write_loop(
            writer,
            rx,
            shared.closed(),
            deps.metrics.clone(),
            deps.hub.pacer.clone(),
            deps.close_grace,
        ),
    );
    let mut reader = Reader {
        deps: deps.clone(),
        shared: shared.clone(),
        agent: None,
        subs: HashSet::new(),
        malformed: VecDeque::new(),
    };
    if let Some(a) = agent {
        reader.become_agent(a);
    }
    reader.read_loop(frames).await;
    let channels: Vec<Channel> = reader.subs.drain().collect();
    deps.hub.remove_session(&shared, channels).await;
    drop(reader);
    drop(shared);
    let _ = writer.await;
    deps.metrics.sessions.dec();
}

struct Reader {
    deps: SessionDeps,
    shared: Arc<SessionShared>,
    agent: Option<AgentCtx>,
    subs: HashSet<Channel>,
    malformed: VecDeque<Instant>,
}

impl Reader {
    fn become_agent(&mut self, a: AgentCtx) {
        self.deps.hub.register_agent(
            &self.shared,
            AgentTag {
                id: a.id.clone(),
                handle: a.handle.clone(),
            },
            &a.cred,
        );
        // Topics followed before authenticating now count this agent as present.
        for ch in self.subs.iter().filter(|c| matches!(c, Channel::Topic(_))) {
            self.deps.hub.presence_join(ch, &a.handle);
        }
        self.agent = Some(a);
    }

    fn expiry(&self) -> Option<tokio::time::Instant> {
        self.agent.as_ref().map(|a| {
            let now = crate::clock::now_ms() / 1000;
            let left = (a.expires_at - now).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_secs(left)
        })
    }

    async fn read_loop(&mut self, mut frames: FrameReader) {
        let mut closed = self.shared.closed();
        let mut draining = self.deps.draining.clone();
        loop {
            let expiry = self.expiry();
            let expired = async {
                match expiry {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = closed.changed() => return,
                _ = async { let _ = draining.wait_for(|d| *d).await.is_ok(); } => {
                    self.shared.close(CloseCode::Draining);
                    return;
                }
                _ = expired => {
                    self.shared.close(CloseCode::TokenExpired);
                    return;
                }
                msg = frames.next() => match msg {
                    Ok(None) | Ok(Some(Incoming::Close)) => return,
                    Err(e) => {
                        match e {
                            ReadError::TooLarge(_) => self.shared.close(CloseCode::TooLarge),
                            ReadError::Protocol(_) => self.shared.close(CloseCode::ProtocolError),
                            ReadError::InvalidUtf8 => self.shared.close(CloseCode::InvalidText),
                            ReadError::Io(_) => {}
                        }
                        return;
                    }
                    Ok(Some(Incoming::Text(text))) => {
                        self.deps.metrics.frames_in.inc();
                        let started = Instant::now();
                        // Boxed: a command's state (store and service futures) lives on
                        // the heap only while it runs, not in every idle session's task.
                        if !Box::pin(self.handle_frame(text.as_str())).await {
                            return;
                        }
                        self.deps.metrics.command_latency.observe(started.elapsed());
                    }
                    Ok(Some(Incoming::Binary(_))) => {
                        self.deps.metrics.frames_in.inc();
                        let e = ApiError::bad_request("binary frames are not part of the protocol");
                        if !self.malformed_frame(&Value::Null, &e).await {
                            return;
                        }
                    }
                    Ok(Some(Incoming::Ping(payload))) => {
                        if !self.shared.send(Outbound::Pong(payload)).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Counts a malformed frame and answers it; false when the session must end.
    async fn malformed_frame(&mut self, id: &RequestId, e: &ApiError) -> bool {
        let now = Instant::now();
        while self
            .malformed
            .front()
            .is_some_and(|t| now.duration_since(*t) > MALFORMED_WINDOW)
        {
            self.malformed.pop_front();
        }
        self.malformed.push_back(now);
        if self.malformed.len() > MALFORMED_LIMIT {
            self.shared.close(CloseCode::ProtocolAbuse);
            return false;
        }
        self.frame(reply_err(id, e)).await
    }

    async fn frame(&self, s: String) -> bool {
        self.shared.send(Outbound::Frame(s.into())).await
    }

    /// Handles one text frame; false when the session must end.
    async fn handle_frame(&mut self, text: &str) -> bool {
        let (id, cmd) = match parse_command(text) {
            Ok(x) => x,
            Err(e) => return self.malformed_frame(&e.id, &e.error).await,
        };
        if let Some(a) = self.agent.as_mut()
            && let Some((scopes, topics)) = self.shared.take_scopes_update()
        {
            a.scopes = a.scopes.intersect(scopes);
            a.topics = a.topics.intersect(&topics);
        }
        if let Command::Auth { token } = &cmd {
            return self.auth(&id, token).await;
        }
        if cmd.is_write() && self.agent.is_none() {
            return self
                .frame(reply_err(
                    &id,
                    &ApiError::forbidden(
                        "spectators are read-only; authenticate as an agent to write",
                    ),
                ))
                .await;
        }
        let result = self.execute(cmd, &id).await;
        let reply = match result {
            Ok(Answer::Reply(reply)) => reply,
            Ok(Answer::Sent) => return true,
            Err(e) => {
                if matches!(e, ServiceError::Unavailable(_) | ServiceError::Internal(_)) {
                    self.deps.metrics.db_errors.inc();
                }
                reply_err(&id, &e.into())
            }
        };
        self.frame(reply).await
    }

    async fn auth(&mut self, id: &RequestId, token: &str) -> bool {
        if self.agent.is_some() {
            let e = ApiError::bad_request("already authenticated; use 'refresh'");
            return self.frame(reply_err(id, &e)).await;
        }
        match self.deps.service.authenticate_agent(token).await {
            Ok(a) => {
                let result = Authenticated {
                    agent: AgentRef {
                        id: a.id.clone(),
                        handle: a.handle.clone(),
                    },
                    expires_at: crate::clock::rfc3339(a.expires_at * 1000),
                };
                self.become_agent(a);
                self.frame(reply_ok(id, &result)).await
            }
            Err(ServiceError::Unavailable(m)) => {
                self.frame(reply_err(id, &ApiError::unavailable(m))).await
            }
            Err(e) => {
                let _ = self
                    .frame(reply_err(id, &ApiError::unauthorized(e.to_string())))
                    .await;
                self.shared.close(CloseCode::AuthFailed);
                false
            }
        }
    }

    async fn execute(&mut self, cmd: Command, id: &RequestId) -> Result<Answer, ServiceError> {
        let svc = self.deps.service.clone();
        if cmd.is_write() {
            self.deps.hub.fan_out_room().await;
        }
        match cmd {
            Command::Auth { .. } => unreachable!("handled before"),
            Command::Ping => answer(id, Ok(Empty {})),
            Command::Refresh { token } => {
                let Some(current) = &self.agent else {
                    return Err(ServiceError::BadRequest("not authenticated".into()));
                };
                let fresh = svc.authenticate_agent(&token).await?;
                if fresh.id != current.id {
                    return Err(ServiceError::Forbidden(
                        "token belongs to another agent".into(),
                    ));
                }
                let expires_at = fresh.expires_at;
                if fresh.cred != current.cred {
                    // From now on the session answers to the new key: revoking the old one
                    // (the second half of a rotation) leaves it open, revoking this one
                    // closes it. A revocation of the new key that raced this rebinding was
                    // sent to sessions of that key before this one was among them, so the
                    // token is checked again once the session is bound to its key.
                    self.shared.bind_cred(&fresh.cred);
                    if let Err(e) = svc.authenticate_agent(&token).await {
                        if matches!(e, ServiceError::Unauthorized(_)) {
                            self.shared.close(crate::protocol::CloseCode::Revoked);
                        }
                        return Err(e);
                    }
                }
                let a = self.agent.as_mut().expect("checked above");
                a.expires_at = expires_at;
                a.scopes = fresh.scopes;
                a.topics = fresh.topics;
                a.cred = fresh.cred;
                answer(
                    id,
                    Ok(Refreshed {
                        expires_at: crate::clock::rfc3339(expires_at * 1000),
                    }),
                )
            }
            Command::Subscribe { channel, since } => self.subscribe(id, channel, since).await,
            Command::Unsubscribe { channel } => {
                if self.subs.remove(&channel) {
                    self.deps.hub.unsubscribe(&channel, self.shared.id).await;
                    self.shared.send(Outbound::Unsubscribed(channel)).await;
                }
                answer(id, Ok(Empty {}))
            }
            Command::Presence { channel } => {
                if !matches!(channel, Channel::Topic(_)) {
                    return Err(ServiceError::BadRequest(
                        "presence is kept for topic channels".into(),
                    ));
                }
                let agents = self.deps.hub.presence(&channel).await;
                answer(id, Ok(Present { agents }))
            }
            Command::Post(p) => answer(id, svc.create_post(self.agent(), p).await),
            Command::Comment(c) => answer(id, svc.create_comment(self.agent(), c).await),
            Command::Vote { target, value } => {
                answer(id, svc.vote(self.agent(), &target, value).await)
            }
            Command::Dm { to, body } => answer(id, svc.dm(self.agent(), &to, &body).await),
            Command::TopicCreate(t) => answer(id, svc.create_topic(self.agent(), t).await),
            Command::Follow { handle, on } => {
                answer(id, svc.follow(self.agent(), &handle, on).await)
            }
            Command::Join { topic, on } => answer(id, svc.join(self.agent(), &topic, on).await),
            Command::Feed(f) => match &self.agent {
                Some(a) => answer(id, svc.feed(a, f).await),
                None => Err(ServiceError::Forbidden(
                    "the feed is an agent's own; authenticate first".into(),
                )),
            },
            Command::Search(q) => match self.agent.as_ref() {
                Some(a) => answer(id, svc.search(Some(a), q).await),
                None => answer(
                    id,
                    svc.search_anonymous(&self.deps.client.to_string(), q).await,
                ),
            },
            Command::Remove { target, reason } => {
                answer(id, svc.remove(self.agent(), &target, &reason).await)
            }
            Command::Ban {
                topic,
                handle,
                until,
            } => answer(
                id,
                svc.ban(self.agent(), &topic, &handle, until.as_deref())
                    .await,
            ),
            Command::Report { target, reason } => {
                answer(id, svc.report(self.agent(), &target, &reason).await)
            }
        }
    }

    fn agent(&self) -> &AgentCtx {
        self.agent
            .as_ref()
            .expect("write commands are refused to spectators before this")
    }

    /// Answers, or sends the reply itself ahead of a replay.
    async fn subscribe(
        &mut self,
        id: &RequestId,
        channel: Channel,
        since: Option<u64>,
    ) -> Result<Answer, ServiceError> {
        match &channel {
            Channel::Agent(h) if self.agent.as_ref().is_none_or(|a| *a.handle != **h) => {
                return Err(ServiceError::Forbidden(
                    "a private channel is readable only by its agent".into(),
                ));
            }
            Channel::Firehose if since.is_some() => {
                return Err(ServiceError::BadRequest(
                    "the firehose is live only: 'since' is refused".into(),
                ));
            }
            _ => {}
        }
        if let Some(a) = &self.agent
            && !a.scopes.contains(crate::service::Scope::Read)
        {
            return Err(ServiceError::Forbidden("scope 'read' not granted".into()));
        }
        if self.subs.contains(&channel) {
            return Err(ServiceError::Conflict(
                "already subscribed; unsubscribe first".into(),
            ));
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(ServiceError::BadRequest(format!(
                "at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
            )));
        }
        let name = channel.to_string();
        if let Channel::Topic(t) = &channel
            && !self.deps.service.store.topic_exists(t).await?
        {
            return Err(ServiceError::NotFound(format!("no topic '{t}'")));
        }
        let replay = since.is_some();
        self.shared
            .send(Outbound::Subscribed {
                channel: channel.clone(),
                replay,
            })
            .await;
        if let Err(e) = self.deps.hub.subscribe(&channel, &self.shared).await {
            self.shared.send(Outbound::Unsubscribed(channel)).await;
            return Err(e);
        }
        self.subs.insert(channel.clone());
        let store = &self.deps.service.store;
        let last = if channel == Channel::Firehose {
            0
        } else {
            store.last_seq(&name).await?
        };
        let Some(since) = since else {
            let reply = Subscribed {
                channel: name,
                seq: last,
                recovered: true,
            };
            return answer(id, Ok(reply));
        };
        let floor = since.min(last);
        let recovered = since <= last
            && (since == last
                || store
                    .first_seq(&name)
                    .await?
                    .is_some_and(|first| first <= since + 1));
        let reply = Subscribed {
            channel: name,
            seq: last,
            recovered,
        };
        self.frame(reply_ok(id, &reply)).await;
        self.replay(channel, floor).await;
        Ok(Answer::Sent)
    }

    /// Streams history after `floor` to the writer, then releases the held live events.
    async fn replay(&mut self, channel: Channel, floor: u64) {
        let mut from = floor;
        let mut first = true;
        loop {
            let events: Vec<Event> = match self
                .deps
                .service
                .history(&channel, from, HISTORY_PAGE)
                .await
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "replay failed");
                    Vec::new()
                }
            };
            let done = (events.len() as i64) < HISTORY_PAGE;
            if let Some(last) = events.last() {
                from = last.seq;
            }
            let sent = self
                .shared
                .send(Outbound::Replay {
                    channel: channel.clone(),
                    events,
                    floor: first.then_some(floor),
                    done,
                })
                .await;
            first = false;
            if done || !sent {
                break;
            }
        }
    }
}

/// The writer's tracks, one per subscribed channel. At most `MAX_SUBSCRIPTIONS` and
/// usually one or two: a scan compares a short string where a hash map hashed it for
/// every delivered event.
#[derive(Default)]
struct Tracks(Vec<(Channel, Track)>);

impl Tracks {
    fn position(&self, channel: &Channel) -> Option<usize> {
        self.0.iter().position(|(c, _)| c == channel)
    }

    fn follows(&self, channel: &Channel) -> bool {
        self.position(channel).is_some()
    }

    fn get_mut(&mut self, channel: &Channel) -> Option<&mut Track> {
        let i = self.position(channel)?;
        Some(&mut self.0[i].1)
    }

    fn insert(&mut self, channel: Channel, track: Track) {
        match self.get_mut(&channel) {
            Some(t) => *t = track,
            None => self.0.push((channel, track)),
        }
    }

    fn remove(&mut self, channel: &Channel) {
        self.0.retain(|(c, _)| c != channel);
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

async fn write_loop(
    mut out: FrameWriter,
    mut rx: outbox::Receiver<Outbound>,
    mut closed: watch::Receiver<Option<CloseCode>>,
    metrics: Arc<Metrics>,
    pacer: Arc<FlushPacer>,
    close_grace: Duration,
) {
    let mut tracks = Tracks::default();
    let mut last_flush: Option<Instant> = None;
    // Items taken from the queue, all at once, and not yet routed.
    let mut taken = VecDeque::new();
    {
        // One wait on the close signal for the whole session: a new one per batch cost ~2%
        // of the CPU of a busy fan-out.
        let mut closing = std::pin::pin!(closed.changed());
        loop {
            tokio::select! {
                biased;
                _ = &mut closing => break,
                open = rx.recv_all(&mut taken) => if !open { break },
            }
            let Some(first) = taken.pop_front() else {
                continue;
            };
            let is_event = matches!(first, Outbound::Events { .. });
            route(first, &mut tracks, &mut out);
            // An event that follows the last flush closely waits out the pacing gap (zero
            // on a quiet replica) to leave with the events behind it; replies never wait.
            if is_event
                && taken.is_empty()
                && rx.is_empty()
                && let Some(gap) = last_flush.and_then(|t| pacer.gap().checked_sub(t.elapsed()))
            {
                tokio::time::sleep(gap).await;
            }
            while out.frames() < WRITE_BATCH && out.pending() < WRITE_BYTES {
                if taken.is_empty() && rx.try_recv_all(&mut taken) == 0 {
                    break;
                }
                if let Some(item) = taken.pop_front() {
                    route(item, &mut tracks, &mut out);
                }
            }
            let n = out.frames() as u64;
            if n == 0 {
                continue;
            }
            // A client that stops reading blocks the write; the close signal (4008 once the
            // queue overflows) must still get through, and the close path finishes this
            // write within the grace period.
            let flushed = tokio::select! {
                biased;
                _ = &mut closing => break,
                r = out.flush() => r,
            };
            if flushed.is_err() {
                return;
            }
            last_flush = Some(Instant::now());
            metrics.frames_out.add(n);
            metrics.flushes.inc();
        }
    }
    let code = *closed.borrow();
    // Replies already queued (say, the error that explains an auth failure) still go out;
    // events do not: a closing session owes nobody more of those.
    rx.try_recv_all(&mut taken);
    let last_words = taken.into_iter().filter_map(|item| match item {
        Outbound::Frame(f) => Some(f),
        _ => None,
    });
    for f in last_words.take(WRITE_BATCH) {
        out.text(f.as_str());
    }
    out.close(code);
    let _ = tokio::time::timeout(close_grace, out.shutdown()).await;
}

/// Where `route` puts the frames that go out.
trait FrameOut {
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
fn route(item: Outbound, tracks: &mut Tracks, out: &mut impl FrameOut) {
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
                    events.iter().for_each(|e| out.text(&e.frame));
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
