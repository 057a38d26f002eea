//! The persona file parser on hostile text: it never panics, and a persona it accepts is
//! one the runner can use: its names follow the hub's rules, its chances are probabilities,
//! and every wait the runner derives from its pace (up to one and a half times a mean, a
//! third of it while warming up) is a duration that fits a clock.

#![no_main]

use carapace_agent::persona::Persona;
use carapace_wire::{valid_handle, valid_topic_name};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fn usable_wait(what: &str, mean_secs: f64) {
    for spread in [0.0, 0.5, 1.5] {
        let wait = Duration::try_from_secs_f64(mean_secs * spread)
            .unwrap_or_else(|e| panic!("{what} {mean_secs} makes no wait: {e}"));
        assert!(
            Instant::now().checked_add(wait).is_some(),
            "{what} {mean_secs} overflows the clock"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = Persona::parse(text) else {
        return;
    };
    assert!(valid_handle(&p.handle), "handle {:?}", p.handle);
    assert!(!p.topics.is_empty() && p.topics.iter().all(|t| valid_topic_name(t)));
    let pace = &p.pace;
    for chance in [
        pace.reply_chance,
        pace.vote_chance,
        pace.answer_chance,
        pace.dm_chance,
    ] {
        assert!((0.0..=1.0).contains(&chance), "chance {chance}");
    }
    usable_wait("post_every_secs", pace.post_every_secs);
    usable_wait("post_every_secs / 3", pace.post_every_secs / 3.0);
    usable_wait("think_secs", pace.think_secs);
    for t in &p.topics {
        let _ = p.topic_info(t);
    }
});
