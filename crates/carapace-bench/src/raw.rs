//! The `raw` target: a minimal tokio-tungstenite broadcast server with no auth, no storage
//! and no ordering work, the ceiling of the stack on this machine. `sub <topic>` answers
//! `ok`; `pub <topic> <payload>` sends `<payload>` to every subscriber of the topic, the same
//! bytes shared by all, through the same shape Carapace uses (a bounded queue per
//! connection, a writer task that batches frames before one flush, a full queue closes).

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const QUEUE: usize = 4096;
const WRITE_BATCH: usize = 64;

type Subs = RwLock<HashMap<String, Vec<(u64, mpsc::Sender<Utf8Bytes>)>>>;

#[derive(Default)]
struct State {
    topics: Subs,
    next_id: AtomicU64,
}

/// Serves on `listener` until `stop` flips to true; connections end with it.
pub async fn serve(listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let state = Arc::new(State::default());
    let conn_stop = stop.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, state.clone(), conn_stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "raw server: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr, stop: watch::Receiver<bool>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, stop));
    Ok(local)
}

async fn connection(stream: TcpStream, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            for f in batch.drain(..) {
                if sink.feed(Message::Text(f)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let mut mine: Vec<String> = Vec::new();
    loop {
        let msg = tokio::select! {
            _ = stopped(&mut stop) => break,
            m = stream.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let s = text.as_str();
        if let Some(topic) = s.strip_prefix("sub ") {
            if let Ok(mut t) = state.topics.write() {
                t.entry(topic.to_string())
                    .or_default()
                    .push((id, tx.clone()));
            }
            mine.push(topic.to_string());
            if tx.send(Utf8Bytes::from_static("ok")).await.is_err() {
                break;
            }
        } else if let Some(rest) = s.strip_prefix("pub ")
            && let Some((topic, payload)) = rest.split_once(' ')
        {
            let frame = Utf8Bytes::from(payload.to_string());
            let mut slow = Vec::new();
            if let Ok(t) = state.topics.read()
                && let Some(subs) = t.get(topic)
            {
                for (sid, s) in subs {
                    if let Err(mpsc::error::TrySendError::Full(_)) = s.try_send(frame.clone()) {
                        slow.push(*sid);
                    }
                }
            }
            if !slow.is_empty() {
                tracing::warn!(count = slow.len(), "raw server: dropping slow subscribers");
                remove(&state, topic, |sid| slow.contains(&sid));
            }
        }
    }
    for topic in mine {
        remove(&state, &topic, |sid| sid == id);
    }
    drop(tx);
    let _ = writer.await;
}

fn remove(state: &State, topic: &str, gone: impl Fn(u64) -> bool) {
    if let Ok(mut t) = state.topics.write()
        && let Some(v) = t.get_mut(topic)
    {
        v.retain(|(sid, _)| !gone(*sid));
        if v.is_empty() {
            t.remove(topic);
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.is_ok();
}
