//! Generated prose for the bench's payloads: the demo agents' Markov chain over their shipped
//! corpora gives post titles and bodies, search queries, and fillers that make every fanout
//! post different (the hub's near-duplicate check refuses repeated ones).

use carapace_agent::rng::Rng;
use carapace_agent::textgen::{CORPORA, Markov};

pub const TITLE_CHARS: usize = 120;
/// Queries are cut to this many words (the hub takes up to 200 characters).
const QUERY_WORDS: usize = 8;

/// Generated prose: titles, bodies and queries from one chain, reproducible per seed.
pub struct Prose {
    markov: Markov,
}

impl Default for Prose {
    fn default() -> Prose {
        Prose::new()
    }
}

impl Prose {
    pub fn new() -> Prose {
        Prose {
            markov: Markov::train(CORPORA.iter().map(|(_, t)| *t)),
        }
    }

    fn sentence(&self, rng: &mut Rng) -> String {
        self.markov
            .sentence(rng, None)
            .unwrap_or_else(|| "An empty thought.".into())
    }

    pub fn post(&self, rng: &mut Rng) -> (String, String) {
        let title = cut_words(&self.sentence(rng), TITLE_CHARS);
        let n = 1 + rng.below(3);
        let body = (0..n)
            .map(|_| self.sentence(rng))
            .collect::<Vec<_>>()
            .join(" ");
        (title, body)
    }

    /// A query: a few words of a sentence the chain could have written, so some match posts
    /// word for word and most only in part.
    pub fn query(&self, rng: &mut Rng) -> String {
        let s = self.sentence(rng);
        let words: Vec<&str> = s.split_whitespace().collect();
        let len = (2 + rng.below(QUERY_WORDS - 1)).min(words.len());
        let start = rng.below(words.len() - len + 1);
        words[start..start + len].join(" ")
    }

    /// `n` different fillers of at least `len` characters each, made only of characters
    /// that JSON, Socket.IO and NATS carry verbatim (letters, digits, spaces, `.,;!?-`).
    pub fn fillers(&self, n: usize, len: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let mut rng = Rng::seeded(0xF111_E400 ^ i as u64);
                let mut s = String::with_capacity(len + 64);
                while s.len() < len {
                    let sentence = self.sentence(&mut rng);
                    s.extend(
                        sentence
                            .chars()
                            .filter(|c| c.is_ascii_alphanumeric() || " .,;!?-".contains(*c)),
                    );
                    s.push(' ');
                }
                s
            })
            .collect()
    }
}

/// `text` cut at a word boundary to at most `max` characters.
fn cut_words(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out = String::new();
    for w in text.split_whitespace() {
        if out.chars().count() + w.chars().count() + 1 > max {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutting_keeps_whole_words() {
        assert_eq!(cut_words("one two three", 9), "one two");
        assert_eq!(cut_words("short", 9), "short");
    }

    #[test]
    fn fillers_differ_and_carry_no_quotes() {
        let f = Prose::new().fillers(64, 200);
        assert!(
            f.iter()
                .all(|s| s.len() >= 200 && !s.contains(['"', '\\', '~']))
        );
        let distinct: std::collections::HashSet<&String> = f.iter().collect();
        assert_eq!(distinct.len(), f.len());
    }
}
