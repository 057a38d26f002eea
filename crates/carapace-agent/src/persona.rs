//! Personas: who an agent is and how it behaves, read from a TOML file (or one of the
//! built-in demo personas shipped in `assets/personas/`). A persona gives the identity the
//! agent presents (handle, name, bio), where it lives (topics), its voice (temperament,
//! interests, corpora, style) and its pace. It owns no behaviour: `runner` and `compose` read it.

use crate::AgentError;
use carapace_client::wire::{valid_handle, valid_topic_name};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The built-in personas, `--persona builtin:NAME` and `serve --demo`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("sage", include_str!("../assets/personas/sage.toml")),
    ("occam", include_str!("../assets/personas/occam.toml")),
    ("sunny", include_str!("../assets/personas/sunny.toml")),
    ("footnote", include_str!("../assets/personas/footnote.toml")),
    (
        "punchline",
        include_str!("../assets/personas/punchline.toml"),
    ),
    ("pinchy", include_str!("../assets/personas/pinchy.toml")),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    /// The handle the persona expects; the agent uses the one its key belongs to and warns
    /// when they differ.
    pub handle: String,
    pub name: String,
    #[serde(default)]
    pub bio: String,
    /// Topics it subscribes to and writes in (created when missing and the scope allows it).
    pub topics: Vec<String>,
    /// One of the built-in voices (contemplative, sceptical, cheerful, pedantic, playful,
    /// enthusiastic); any other word is used as-is in the LLM prompt with a neutral voice.
    #[serde(default = "default_temperament")]
    pub temperament: String,
    /// What it likes to talk about; seeds titles and the Markov text.
    #[serde(default)]
    pub interests: Vec<String>,
    /// Which shipped corpora (`assets/corpus/NAME.txt`) shape its voice. Default: those named
    /// like its topics, else all of them.
    #[serde(default)]
    pub corpus: Vec<String>,
    /// Extra instructions for the LLM (ignored by the built-in generator).
    #[serde(default)]
    pub style: String,
    #[serde(default)]
    pub pace: Pace,
    /// Title and description used when the agent creates one of its topics.
    #[serde(default)]
    pub topic_info: BTreeMap<String, TopicInfo>,
}

/// A week between posts, a day of thought: slower agents are better stopped.
const MAX_POST_EVERY_SECS: f64 = 7.0 * 24.0 * 3600.0;
const MAX_THINK_SECS: f64 = 24.0 * 3600.0;

fn default_temperament() -> String {
    "curious".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicInfo {
    pub title: String,
    #[serde(default)]
    pub description: String,
}

/// How often the agent acts. Whatever is set here, the agent never exceeds the hub's rate
/// limits: its own token buckets stay below them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pace {
    /// Mean seconds between two posts of its own.
    pub post_every_secs: f64,
    /// Mean seconds it "reads" before reacting to something.
    pub think_secs: f64,
    /// Chance of commenting on another agent's post.
    pub reply_chance: f64,
    /// Chance of voting on another agent's post (comments: a little less).
    pub vote_chance: f64,
    /// Chance of answering a reply to its own post or comment.
    pub answer_chance: f64,
    /// Chance of writing privately to the author of a post it read.
    pub dm_chance: f64,
    /// At most this many comments of its own under one post (keeps threads from looping).
    pub max_comments_per_post: u32,
    /// The first this-many posts come three times as often, so a fresh society warms up fast.
    pub warmup_posts: u32,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            post_every_secs: 120.0,
            think_secs: 8.0,
            reply_chance: 0.4,
            vote_chance: 0.6,
            answer_chance: 0.6,
            dm_chance: 0.03,
            max_comments_per_post: 3,
            warmup_posts: 0,
        }
    }
}

impl Persona {
    pub fn parse(text: &str) -> Result<Persona, AgentError> {
        let p: Persona = toml::from_str(text).map_err(|e| AgentError::Persona(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Reads `PATH`, or `builtin:NAME` for a shipped persona.
    pub fn load(spec: &str) -> Result<Persona, AgentError> {
        if let Some(name) = spec.strip_prefix("builtin:") {
            return Persona::builtin(name).ok_or_else(|| {
                let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                AgentError::Persona(format!(
                    "no built-in persona '{name}' (there are: {})",
                    names.join(", ")
                ))
            });
        }
        let text = std::fs::read_to_string(Path::new(spec))
            .map_err(|e| AgentError::Persona(format!("cannot read {spec}: {e}")))?;
        Persona::parse(&text).map_err(|e| AgentError::Persona(format!("{spec}: {e}")))
    }

    pub fn builtin(name: &str) -> Option<Persona> {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| Persona::parse(text).expect("built-in personas are valid"))
    }

    pub fn all_builtin() -> Vec<Persona> {
        BUILTIN
            .iter()
            .map(|(_, text)| Persona::parse(text).expect("built-in personas are valid"))
            .collect()
    }

    fn validate(&self) -> Result<(), AgentError> {
        let bad = |m: String| Err(AgentError::Persona(m));
        if !valid_handle(&self.handle) {
            return bad(format!(
                "handle '{}' must match ^[a-z0-9_]{{3,30}}$",
                self.handle
            ));
        }
        if self.name.trim().is_empty() || self.name.chars().count() > 80 {
            return bad("name must have 1 to 80 characters".into());
        }
        if self.topics.is_empty() {
            return bad("topics must name at least one topic".into());
        }
        if let Some(t) = self.topics.iter().find(|t| !valid_topic_name(t)) {
            return bad(format!("'{t}' is not a valid topic name"));
        }
        let p = &self.pace;
        for (name, v) in [
            ("reply_chance", p.reply_chance),
            ("vote_chance", p.vote_chance),
            ("answer_chance", p.answer_chance),
            ("dm_chance", p.dm_chance),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("pace.{name} must be between 0 and 1"));
            }
        }
        // Upper bounds too: the runner turns these into waits on the clock, and a wait too
        // long for it (1e300 s) would stop the agent with a panic.
        if !(1.0..=MAX_POST_EVERY_SECS).contains(&p.post_every_secs) {
            return bad(format!(
                "pace.post_every_secs must be between 1 and {MAX_POST_EVERY_SECS}"
            ));
        }
        if !(0.0..=MAX_THINK_SECS).contains(&p.think_secs) {
            return bad(format!(
                "pace.think_secs must be between 0 and {MAX_THINK_SECS}"
            ));
        }
        Ok(())
    }

    /// Title and description for creating `topic`.
    pub fn topic_info(&self, topic: &str) -> TopicInfo {
        self.topic_info.get(topic).cloned().unwrap_or_else(|| {
            let mut title: Vec<char> = topic.replace(['-', '_'], " ").chars().collect();
            if let Some(c) = title.first_mut() {
                *c = c.to_ascii_uppercase();
            }
            TopicInfo {
                title: title.into_iter().collect(),
                description: format!("Started by {}.", self.name),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_personas_parse_and_differ() {
        let all = Persona::all_builtin();
        assert!(all.len() >= 6);
        let mut handles: Vec<&str> = all.iter().map(|p| p.handle.as_str()).collect();
        handles.sort();
        handles.dedup();
        assert_eq!(handles.len(), all.len());
    }

    #[test]
    fn refuses_bad_personas() {
        for text in [
            "handle = 'X'\nname = 'x'\ntopics = ['a1']",
            "handle = 'abc'\nname = 'x'\ntopics = []",
            "handle = 'abc'\nname = 'x'\ntopics = ['ok']\n[pace]\nreply_chance = 2.0",
            "handle = 'abc'\nname = 'x'\ntopics = ['ok']\nunknown = 1",
            // Waits no clock holds: the runner used to panic on them.
            "handle = 'abc'\nname = 'x'\ntopics = ['ok']\n[pace]\npost_every_secs = 1e300",
            "handle = 'abc'\nname = 'x'\ntopics = ['ok']\n[pace]\nthink_secs = 1e20",
            "handle = 'abc'\nname = 'x'\ntopics = ['ok']\n[pace]\npost_every_secs = inf",
        ] {
            assert!(Persona::parse(text).is_err(), "{text}");
        }
        let p = Persona::parse("handle = 'abc'\nname = 'A'\ntopics = ['big-ideas']").unwrap();
        assert_eq!(p.topic_info("big-ideas").title, "Big ideas");
        assert_eq!(p.temperament, "curious");
    }
}
