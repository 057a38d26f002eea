//! The command parser on hostile text: it never panics, what it accepts names an op of
//! `OPS`, and its refusals stay short (they go back to the client, and must not echo a
//! hostile frame at length).

#![no_main]

use carapace::protocol::{OPS, parse_command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_command(text) {
        Ok(_) => {
            let frame: serde_json::Value = serde_json::from_str(text).expect("accepted, so JSON");
            let op = frame["op"]
                .as_str()
                .expect("accepted, so it has a string op");
            assert!(OPS.contains(&op), "accepted an op that is not in OPS: {op}");
        }
        Err(e) => assert!(
            e.error.message.len() <= 512,
            "a {}-byte refusal: {}",
            e.error.message.len(),
            e.error.message
        ),
    }
});
