//! The bus's wire format: `1\n<origin>\n<channel>\n<seq>\n<frame>`, where origin names the
//! publishing process (a replica ignores its own messages: it delivered them to its Hub
//! already, without a round trip) and frame is the push exactly as sessions send it. Control
//! messages use the same shape with channel `control`, seq 0 and the JSON of a `Control`.

/// One message on the wire, borrowed from the payload.
#[derive(Debug, PartialEq)]
pub(super) struct Wire<'a> {
    pub(super) origin: &'a str,
    pub(super) channel: &'a str,
    pub(super) seq: u64,
    pub(super) body: &'a [u8],
}

const WIRE_VERSION: &str = "1";
pub(super) const CONTROL: &str = "control";

impl<'a> Wire<'a> {
    pub(super) fn encode(origin: &str, channel: &str, seq: u64, body: &[u8]) -> Vec<u8> {
        let head = format!("{WIRE_VERSION}\n{origin}\n{channel}\n{seq}\n");
        let mut v = Vec::with_capacity(head.len() + body.len());
        v.extend_from_slice(head.as_bytes());
        v.extend_from_slice(body);
        v
    }

    pub(super) fn decode(payload: &'a [u8]) -> Option<Wire<'a>> {
        let mut parts = payload.splitn(5, |b| *b == b'\n');
        let version = parts.next()?;
        if version != WIRE_VERSION.as_bytes() {
            return None;
        }
        let origin = std::str::from_utf8(parts.next()?).ok()?;
        let channel = std::str::from_utf8(parts.next()?).ok()?;
        let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let body = parts.next()?;
        Some(Wire {
            origin,
            channel,
            seq,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trips_and_keeps_newlines_in_the_frame() {
        let frame = b"{\"a\":\"x\ny\"}\n";
        let p = Wire::encode("r1/abcd", "topic:general", 42, frame);
        let w = Wire::decode(&p).unwrap();
        assert_eq!(
            w,
            Wire {
                origin: "r1/abcd",
                channel: "topic:general",
                seq: 42,
                body: frame
            }
        );
    }

    #[test]
    fn wire_refuses_other_versions_and_garbage() {
        assert!(Wire::decode(b"2\no\ntopic:a\n1\n{}").is_none());
        assert!(Wire::decode(b"1\no\ntopic:a\nx\n{}").is_none());
        assert!(Wire::decode(b"1\no\ntopic:a").is_none());
        assert!(Wire::decode(b"").is_none());
    }
}
