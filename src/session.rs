//! One WebSocket connection's command side: reads the client's frames, runs each command in
//! order and queues its reply. What goes out to the socket, and in which order, is the
//! session's outbound side (see `delivery`), which runs beside it on an egress shard.
//!
//! Its task runs in a `session` span (replica, session id, remote address, and the agent's
//! handle once known); it logs each refused command and, once, how the session closed.
//! Deliveries log nothing.

use crate::delivery::{self, AgentTag, Outbound, SessionShared};
use crate::history;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{
    AgentRef, ApiError, Authenticated, Channel, CloseCode, Command, Empty, MAX_SUBSCRIPTIONS,
    Present, Refreshed, RequestId, Subscribed, parse_command, reply_err, reply_ok,
};
use crate::service::{ANSWER_DEADLINE, AgentCtx, Service, ServiceError};
use crate::telemetry::{close_level, event_at, refusal_level, scrub};
use crate::websocket::{FrameReader, Incoming, ReadError, Socket};
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// More malformed frames than this within `MALFORMED_WINDOW` closes the session with 4000.
const MALFORMED_LIMIT: usize = 20;
const MALFORMED_WINDOW: Duration = Duration::from_secs(60);
/// How long a replay whose history read failed waits before it reads again.
const REPLAY_RETRY_WAIT: Duration = Duration::from_millis(250);
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
    /// The bus has been down too long (see `bus_watch`): sessions close with 1012.
    pub bus_lost: watch::Receiver<bool>,
    /// The client's address, for limits on what a session without an agent may do.
    pub client: std::net::IpAddr,
    /// This replica's id, for the session's span.
    pub replica: Arc<str>,
}

/// How the client's side of a session ended, when the hub did not close it.
enum PeerEnd {
    /// The client sent a close frame.
    CloseFrame,
    /// The connection ended without one (or the hub ended the session).
    Gone,
}

/// Runs a session to its end. `agent` is set when the upgrade request carried a valid token;
/// `held` (an address's slot, the drain's count) is released when the session ends.
///
/// Not an `async fn`, and the session is set up before its future is made: a future keeps
/// its arguments for its whole life, beside whatever it moved out of them, so every idle
/// session would hold a second copy of the socket, the deps and the agent.
pub fn run(
    socket: Socket,
    deps: SessionDeps,
    agent: Option<AgentCtx>,
    held: impl Send + 'static,
) -> impl Future<Output = ()> + Send {
    let id = deps.hub.new_session_id();
    // A root: the upgrade request's span ended with its 101.
    let span = tracing::info_span!(
        parent: None,
        "session",
        replica = %deps.replica,
        session = id,
        remote = %deps.client,
        agent = tracing::field::Empty,
    );
    let (session, frames, writer) = span.in_scope(|| open(id, socket, deps, agent, span.clone()));
    session
        .serve(frames, writer, Instant::now(), held)
        .instrument(span)
}

/// The session, its frame reader and its writer task (started on an egress shard).
fn open(
    id: u64,
    socket: Socket,
    deps: SessionDeps,
    agent: Option<AgentCtx>,
    span: tracing::Span,
) -> (Session, FrameReader, tokio::task::JoinHandle<()>) {
    let (shared, queue) = SessionShared::new(id, deps.queue);
    deps.metrics.sessions.inc();
    let Socket {
        reader: frames,
        writer,
    } = socket;
    let writer = deps.hub.spawn_writer(
        shared.id,
        delivery::write_loop(
            writer,
            queue,
            shared.closed(),
            deps.metrics.clone(),
            deps.hub.pacer.clone(),
            deps.close_grace,
        ),
    );
    let mut session = Session {
        deps,
        shared,
        agent: None,
        subs: HashSet::new(),
        malformed: VecDeque::new(),
        span,
    };
    if let Some(a) = agent {
        session.become_agent(a);
    }
    (session, frames, writer)
}

/// The session's one close line: the code the hub closed it with and why, or how the client
/// left (1000 with a close frame, 1006 without: codes never sent, for the log only).
fn log_close(code: Option<CloseCode>, peer: PeerEnd, lasted: Duration) {
    let lasted_ms = lasted.as_millis() as u64;
    match (code, peer) {
        (Some(c), _) => event_at!(
            close_level(c),
            code = c.code(),
            reason = c.reason(),
            by = "hub",
            lasted_ms,
            "session closed"
        ),
        (None, peer) => {
            let (code, reason) = match peer {
                PeerEnd::CloseFrame => (1000u16, "closed by the client"),
                PeerEnd::Gone => (1006, "connection lost without a close frame"),
            };
            tracing::info!(code, reason, by = "client", lasted_ms, "session closed")
        }
    }
}

/// The command side of one session, owned by its reading task.
struct Session {
    deps: SessionDeps,
    shared: Arc<SessionShared>,
    agent: Option<AgentCtx>,
    subs: HashSet<Channel>,
    malformed: VecDeque<Instant>,
    /// The session's span, to record the agent in once known.
    span: tracing::Span,
}

impl Session {
    /// Serves the client until the session ends, then leaves the hub, waits for the writer
    /// to finish, and releases `held`.
    async fn serve(
        mut self,
        frames: FrameReader,
        writer: tokio::task::JoinHandle<()>,
        started: Instant,
        held: impl Send,
    ) {
        let peer = self.read_loop(frames).await;
        let code = *self.shared.closed().borrow();
        log_close(code, peer, started.elapsed());
        let channels: Vec<Channel> = self.subs.drain().collect();
        self.deps.hub.remove_session(&self.shared, channels).await;
        let metrics = self.deps.metrics.clone();
        // The writer ends once the last sender of its queue (the session's) is gone.
        drop(self);
        let _ = writer.await;
        metrics.sessions.dec();
        drop(held);
    }

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
        self.span.record("agent", a.handle.as_str());
        tracing::info!("authenticated");
        self.agent = Some(a);
    }

    fn expiry(&self) -> Option<tokio::time::Instant> {
        self.agent.as_ref().map(|a| {
            let now = crate::clock::now_ms() / 1000;
            let left = (a.expires_at - now).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_secs(left)
        })
    }

    /// Reads until the session ends; how the client's side ended, if it did.
    async fn read_loop(&mut self, mut frames: FrameReader) -> PeerEnd {
        let mut closed = self.shared.closed();
        let mut draining = self.deps.draining.clone();
        let mut bus_lost = self.deps.bus_lost.clone();
        loop {
            let expiry = self.expiry();
            let expired = async {
                match expiry {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = closed.changed() => return PeerEnd::Gone,
                _ = async { let _ = draining.wait_for(|d| *d).await.is_ok(); } => {
                    self.shared.close(CloseCode::Draining);
                    return PeerEnd::Gone;
                }
                _ = async { let _ = bus_lost.wait_for(|l| *l).await.is_ok(); } => {
                    self.shared.close(CloseCode::BusLost);
                    return PeerEnd::Gone;
                }
                _ = expired => {
                    self.shared.close(CloseCode::TokenExpired);
                    return PeerEnd::Gone;
                }
                msg = frames.next() => match msg {
                    Ok(Some(Incoming::Close)) => return PeerEnd::CloseFrame,
                    Ok(None) => return PeerEnd::Gone,
                    Err(e) => {
                        match e {
                            ReadError::TooLarge(_) => self.shared.close(CloseCode::TooLarge),
                            ReadError::Protocol(_) => self.shared.close(CloseCode::ProtocolError),
                            ReadError::InvalidUtf8 => self.shared.close(CloseCode::InvalidText),
                            ReadError::Io(e) => {
                                tracing::debug!(error = %e, "session read failed");
                            }
                        }
                        return PeerEnd::Gone;
                    }
                    Ok(Some(Incoming::Text(text))) => {
                        self.deps.metrics.frames_in.inc();
                        let started = Instant::now();
                        // Boxed: a command's state (store and service futures) lives on
                        // the heap only while it runs, not in every idle session's task.
                        if !Box::pin(self.handle_frame(text.as_str())).await {
                            return PeerEnd::Gone;
                        }
                        self.deps.metrics.command_latency.observe(started.elapsed());
                    }
                    Ok(Some(Incoming::Binary(_))) => {
                        self.deps.metrics.frames_in.inc();
                        let e = ApiError::bad_request("binary frames are not part of the protocol");
                        if !self.malformed_frame(&Value::Null, &e).await {
                            return PeerEnd::Gone;
                        }
                    }
                    Ok(Some(Incoming::Ping(payload))) => {
                        if !self.shared.send(Outbound::Pong(payload)).await {
                            return PeerEnd::Gone;
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
        self.refuse_as(None, None, id, e).await
    }

    /// Logs a refused command and queues its error reply; false once the writer is gone.
    async fn refuse(&self, cmd: &Command, id: &RequestId, e: &ApiError) -> bool {
        self.refuse_as(Some(cmd.op()), cmd.channel(), id, e).await
    }

    /// The refusal's one log line (its op when it parsed, the channel it named, the error
    /// code and the reason with anything secret-shaped in it blanked), then its reply.
    async fn refuse_as(
        &self,
        op: Option<&str>,
        channel: Option<&Channel>,
        id: &RequestId,
        e: &ApiError,
    ) -> bool {
        event_at!(
            refusal_level(e.code),
            op,
            channel = channel.map(tracing::field::display),
            error = e.code.as_str(),
            reason = %scrub(&e.message),
            "command refused"
        );
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
        // Free when debug is off: the span is then disabled and entering it does nothing.
        let span = tracing::debug_span!("command", op = cmd.op());
        self.run_command(cmd, id).instrument(span).await
    }

    async fn run_command(&mut self, cmd: Command, id: RequestId) -> bool {
        if let Command::Auth { token } = &cmd {
            return self.auth(&cmd, &id, token).await;
        }
        if cmd.is_write() && self.agent.is_none() {
            let e =
                ApiError::forbidden("spectators are read-only; authenticate as an agent to write");
            return self.refuse(&cmd, &id, &e).await;
        }
        let op = cmd.op();
        let channel = cmd.channel().cloned();
        match self.execute(cmd, &id).await {
            Ok(Answer::Reply(reply)) => self.frame(reply).await,
            Ok(Answer::Sent) => true,
            Err(e) => {
                if matches!(e, ServiceError::Unavailable(_) | ServiceError::Internal(_)) {
                    self.deps.metrics.db_errors.inc();
                }
                self.refuse_as(Some(op), channel.as_ref(), &id, &e.into())
                    .await
            }
        }
    }

    async fn auth(&mut self, cmd: &Command, id: &RequestId, token: &str) -> bool {
        if self.agent.is_some() {
            let e = ApiError::bad_request("already authenticated; use 'refresh'");
            return self.refuse(cmd, id, &e).await;
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
                self.refuse(cmd, id, &ApiError::unavailable(m)).await
            }
            Err(e) => {
                let _ = self
                    .refuse(cmd, id, &ApiError::unauthorized(e.to_string()))
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
                self.leave(channel).await;
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
            Command::Post(p) => {
                self.write(id, |svc, a| async move { svc.create_post(&a, p).await })
                    .await
            }
            Command::Comment(c) => {
                self.write(id, |svc, a| async move { svc.create_comment(&a, c).await })
                    .await
            }
            Command::Vote { target, value } => {
                self.write(id, move |svc, a| async move {
                    svc.vote(&a, &target, value).await
                })
                .await
            }
            Command::Dm { to, body } => {
                self.write(id, |svc, a| async move { svc.dm(&a, &to, &body).await })
                    .await
            }
            Command::TopicCreate(t) => {
                self.write(id, |svc, a| async move { svc.create_topic(&a, t).await })
                    .await
            }
            Command::Follow { handle, on } => {
                self.write(id, move |svc, a| async move {
                    svc.follow(&a, &handle, on).await
                })
                .await
            }
            Command::Join { topic, on } => {
                self.write(
                    id,
                    move |svc, a| async move { svc.join(&a, &topic, on).await },
                )
                .await
            }
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
                self.write(id, |svc, a| async move {
                    svc.remove(&a, &target, &reason).await
                })
                .await
            }
            Command::Ban {
                topic,
                handle,
                until,
            } => {
                self.write(id, |svc, a| async move {
                    svc.ban(&a, &topic, &handle, until.as_deref()).await
                })
                .await
            }
            Command::Report { target, reason } => {
                self.write(id, |svc, a| async move {
                    svc.report(&a, &target, &reason).await
                })
                .await
            }
        }
    }

    /// Runs a write in a task of its own and waits for its answer at most `ANSWER_DEADLINE`.
    /// Past that (a statement lost with the network to the database would otherwise hold the
    /// session until the kernel's TCP timeout, ~15 minutes) the client is answered
    /// `unavailable` and the write runs on: it is never cancelled midway, since a database
    /// connection dropped inside a transaction could be handed to the next write in a broken
    /// state. Its outcome is then unknown to the client, as for an unanswered write.
    async fn write<T, F, Fut>(&self, id: &RequestId, call: F) -> Result<Answer, ServiceError>
    where
        T: serde::Serialize,
        F: FnOnce(Arc<Service>, AgentCtx) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>> + Send + 'static,
    {
        let id = id.clone();
        let write = call(self.deps.service.clone(), self.agent().clone());
        // In the session's and the command's span, as if it ran here.
        let task = tokio::spawn(
            async move { answer(&id, write.await) }.instrument(tracing::Span::current()),
        );
        match tokio::time::timeout(ANSWER_DEADLINE, task).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => Err(ServiceError::Internal(format!("write task failed: {e}"))),
            Err(_) => Err(ServiceError::deadline()),
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
            return Err(e.into());
        }
        self.subs.insert(channel.clone());
        tracing::info!(%channel, since, "subscribed");
        // From here the session follows the channel: if where it stands cannot be read, it
        // leaves it again, so that the client's next `subscribe` starts afresh (and the
        // writer holds no live events for a replay that will not come).
        let history = self.deps.hub.history();
        let position = match since {
            None if channel == Channel::Firehose => Ok((0, true, None)),
            None => history
                .last_seq(&channel)
                .await
                .map(|last| (last, true, None)),
            Some(since) => history
                .recovery(&channel, since)
                .await
                .map(|r| (r.last, r.recovered, Some(r.floor))),
        };
        let (last, recovered, floor) = match position {
            Ok(p) => p,
            Err(e) => {
                self.leave(channel).await;
                return Err(e.into());
            }
        };
        let reply = Subscribed {
            channel: name,
            seq: last,
            recovered,
        };
        // With `since`, history after the floor follows the reply.
        let Some(floor) = floor else {
            return answer(id, Ok(reply));
        };
        self.frame(reply_ok(id, &reply)).await;
        self.replay(channel, floor).await;
        Ok(Answer::Sent)
    }

    /// Stops following `channel`, if the session did. The writer hears of it before the hub:
    /// a firehose copy queued after the hub stopped sending the channel's own copies, but
    /// before the writer knew, would be dropped as a copy of what the channel carries.
    async fn leave(&mut self, channel: Channel) {
        if self.subs.remove(&channel) {
            self.shared
                .send(Outbound::Unsubscribed(channel.clone()))
                .await;
            self.deps.hub.unsubscribe(&channel, self.shared.id).await;
            tracing::info!(%channel, "unsubscribed");
        }
    }

    /// Streams history after `floor` to the writer, then releases the held live events.
    /// Releasing them without the history would skip what came in between, so a read that
    /// fails is tried once more, and if it fails again the session closes with 1013: the
    /// client resumes with `since` from what it received, on this replica or another.
    async fn replay(&mut self, channel: Channel, floor: u64) {
        let mut from = floor;
        let mut first = true;
        let mut failed = false;
        loop {
            let events = match self
                .deps
                .hub
                .history()
                .after(&channel, from, history::PAGE)
                .await
            {
                Ok(e) => e,
                Err(e) if !failed => {
                    tracing::warn!(%channel, error = %e, "replay failed; trying again");
                    failed = true;
                    tokio::time::sleep(REPLAY_RETRY_WAIT).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "replay failed again; closing the session with 1013");
                    self.shared.close(CloseCode::TryAgain);
                    return;
                }
            };
            let done = (events.len() as i64) < history::PAGE;
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
