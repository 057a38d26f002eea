//! JSON log lines, one object per event: `timestamp`, `level`, the replica (a field of the
//! subscriber, so that lines from tasks outside any span carry it too), `target`, the
//! innermost `span`'s name, `message`, then the fields of every span around the event, from
//! the outermost in, and the event's own fields, all at the top level. A session's lines can
//! so be picked out by `session` or `agent` without knowing which span set them.

use serde_json::Value;
use std::fmt;
use std::io::Write;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The keys each line starts with; a span or event field of the same name is not repeated.
const HEAD: [&str; 6] = ["timestamp", "level", "replica", "target", "span", "message"];

/// The layer; `W` makes the writer each line goes to in one `write_all`.
pub struct JsonLines<W> {
    replica: Option<Value>,
    make_writer: W,
}

impl<W> JsonLines<W> {
    pub fn new(replica: Option<&str>, make_writer: W) -> Self {
        JsonLines {
            replica: replica.map(Value::from),
            make_writer,
        }
    }
}

/// Fields in the order they were first recorded; names are the callsites' own (static), so a
/// long-lived span keeps only its values.
#[derive(Default)]
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    fn set(&mut self, field: &Field, value: Value) {
        let name = field.name();
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| *k == name)?;
        Some(self.0.remove(i).1)
    }
}

/// Numbers and booleans as themselves, the rest as text.
impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, Value::from(format!("{value:?}")));
    }
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<Fields>() {
                    for (k, v) in &f.0 {
                        match fields.0.iter_mut().find(|(n, _)| n == k) {
                            Some(slot) => slot.1 = v.clone(),
                            None => fields.0.push((k, v.clone())),
                        }
                    }
                }
                innermost = Some(span.name());
            }
        }
        event.record(&mut fields);
        let meta = event.metadata();
        let mut head: Vec<(&str, Value)> = Vec::with_capacity(HEAD.len());
        head.push((
            "timestamp",
            Value::from(crate::clock::rfc3339(crate::clock::now_ms())),
        ));
        head.push(("level", Value::from(meta.level().as_str())));
        if let Some(r) = self.replica.clone().or_else(|| fields.take("replica")) {
            head.push(("replica", r));
        }
        head.push(("target", Value::from(meta.target())));
        if let Some(name) = innermost {
            head.push(("span", Value::from(name)));
        }
        if let Some(m) = fields.take("message") {
            head.push(("message", m));
        }
        let mut line = Vec::with_capacity(256);
        line.push(b'{');
        let rest = fields
            .0
            .iter()
            .filter(|(k, _)| !HEAD.contains(k))
            .map(|(k, v)| (*k, v));
        let all = head.iter().map(|(k, v)| (*k, v)).chain(rest);
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                line.push(b',');
            }
            // Keys and values are strings and JSON values: writing them cannot fail.
            let _ = serde_json::to_writer(&mut line, k);
            line.push(b':');
            let _ = serde_json::to_writer(&mut line, v);
        }
        line.extend_from_slice(b"}\n");
        // One write per line keeps lines of concurrent tasks whole.
        let _ = self.make_writer.make_writer_for(meta).write_all(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(buf: &Buffer) -> Vec<Value> {
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn lines_carry_the_replica_and_every_enclosing_spans_fields_at_the_top_level() {
        let buf = Buffer::default();
        let subscriber =
            tracing_subscriber::registry().with(JsonLines::new(Some("r-1"), buf.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(n = 1, "outside");
            let session = tracing::info_span!(
                "session",
                replica = "r-1",
                session = 7u64,
                agent = tracing::field::Empty
            );
            let _s = session.enter();
            tracing::info!("before auth");
            session.record("agent", "alice");
            let command = tracing::info_span!("command", op = "post");
            let _c = command.enter();
            tracing::warn!(code = 4008u16, reason = "too \"slow\"", "session closed");
        });
        let l = lines(&buf);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0]["replica"], "r-1");
        assert_eq!(l[0]["message"], "outside");
        assert_eq!(l[0]["n"], 1);
        assert!(l[0].get("span").is_none());
        assert_eq!(l[1]["span"], "session");
        assert_eq!(l[1]["session"], 7);
        assert!(l[1].get("agent").is_none(), "not recorded yet: {}", l[1]);
        assert_eq!(l[2]["level"], "WARN");
        assert_eq!(l[2]["span"], "command");
        assert_eq!(l[2]["agent"], "alice");
        assert_eq!(l[2]["op"], "post");
        assert_eq!(l[2]["code"], 4008);
        assert_eq!(l[2]["reason"], "too \"slow\"");
        assert!(l[2]["timestamp"].as_str().unwrap().ends_with('Z'));
        let raw = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let third = raw.lines().nth(2).unwrap();
        assert_eq!(third.matches("\"replica\"").count(), 1);
        // The head, then the outer span's fields, the inner span's, the event's.
        let at = |key: &str| third.find(&format!("\"{key}\":")).unwrap();
        let order = ["timestamp", "level", "replica", "target", "span", "message"]
            .into_iter()
            .chain(["session", "agent", "op", "code", "reason"])
            .map(at)
            .collect::<Vec<_>>();
        assert!(order.is_sorted(), "{third}");
    }

    #[test]
    fn without_a_replica_the_spans_own_is_kept() {
        let buf = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(None, buf.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("session", replica = "r-2")
                .in_scope(|| tracing::info!(target: "x", "inside"));
        });
        let l = lines(&buf);
        assert_eq!(l[0]["replica"], "r-2");
        assert_eq!(l[0]["target"], "x");
    }
}
