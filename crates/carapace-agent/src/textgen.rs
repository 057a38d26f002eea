//! The built-in text generator, needing no network: a word-level Markov chain (order 2)
//! trained on the corpora shipped in `assets/corpus/`, and per-temperament templates for
//! titles, openers and closers. A persona's interests seed both, so a philosopher and a crab
//! enthusiast sound different from the same machinery.

use crate::persona::Persona;
use crate::rng::Rng;
use std::collections::HashMap;

/// The shipped corpora, by name. One sentence per line.
pub const CORPORA: &[(&str, &str)] = &[
    (
        "philosophy",
        include_str!("../assets/corpus/philosophy.txt"),
    ),
    ("science", include_str!("../assets/corpus/science.txt")),
    ("futures", include_str!("../assets/corpus/futures.txt")),
    ("language", include_str!("../assets/corpus/language.txt")),
    ("humour", include_str!("../assets/corpus/humour.txt")),
    ("crabs", include_str!("../assets/corpus/crabs.txt")),
];

const END: u32 = u32::MAX;
const MAX_SENTENCE_WORDS: usize = 40;

/// An order-2 word Markov chain.
pub struct Markov {
    words: Vec<String>,
    next: HashMap<(u32, u32), Vec<u32>>,
    starts: Vec<(u32, u32)>,
    /// Opening states of the sentences that contain this (lowercase, bare) word: seeds for
    /// a topic that still begin like a sentence.
    by_word: HashMap<String, Vec<(u32, u32)>>,
}

/// Lowercase, without surrounding punctuation.
pub fn bare(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

impl Markov {
    pub fn train<'a>(texts: impl IntoIterator<Item = &'a str>) -> Markov {
        let mut m = Markov {
            words: Vec::new(),
            next: HashMap::new(),
            starts: Vec::new(),
            by_word: HashMap::new(),
        };
        let mut ids: HashMap<&'a str, u32> = HashMap::new();
        for text in texts {
            for line in text.lines() {
                let mut sentence: Vec<u32> = Vec::new();
                for w in line.split_whitespace() {
                    let id = *ids.entry(w).or_insert_with(|| {
                        m.words.push(w.to_string());
                        (m.words.len() - 1) as u32
                    });
                    sentence.push(id);
                    if w.ends_with(['.', '!', '?']) {
                        m.add_sentence(&sentence);
                        sentence.clear();
                    }
                }
                m.add_sentence(&sentence);
            }
        }
        m
    }

    fn add_sentence(&mut self, s: &[u32]) {
        if s.len() < 3 {
            return;
        }
        let start = (s[0], s[1]);
        self.starts.push(start);
        for i in 0..s.len() - 1 {
            let state = (s[i], s[i + 1]);
            let follow = s.get(i + 2).copied().unwrap_or(END);
            self.next.entry(state).or_default().push(follow);
        }
        for &w in s {
            let seeds = self
                .by_word
                .entry(bare(&self.words[w as usize]))
                .or_default();
            if seeds.last() != Some(&start) {
                seeds.push(start);
            }
        }
    }

    pub fn knows(&self, word: &str) -> bool {
        self.by_word.contains_key(&bare(word))
    }

    /// One sentence, begun like a sentence of the corpus that contains `seed` when there is
    /// one. A state is never visited twice, so the chain cannot loop ("one for crushing and
    /// one for crushing and ...").
    pub fn sentence(&self, rng: &mut Rng, seed: Option<&str>) -> Option<String> {
        let seeded = seed.and_then(|s| self.by_word.get(&bare(s)));
        let mut state = *match seeded {
            Some(states) => rng.pick(states)?,
            None => rng.pick(&self.starts)?,
        };
        let mut out = vec![state.0, state.1];
        let mut visited = std::collections::HashSet::from([state]);
        while out.len() < MAX_SENTENCE_WORDS {
            let Some(follow) = self.next.get(&state) else {
                break;
            };
            let fresh: Vec<u32> = follow
                .iter()
                .copied()
                .filter(|&w| w == END || !visited.contains(&(state.1, w)))
                .collect();
            let Some(&w) = rng.pick(&fresh) else {
                break;
            };
            if w == END {
                break;
            }
            out.push(w);
            state = (state.1, w);
            visited.insert(state);
        }
        let mut s = out
            .iter()
            .map(|&i| self.words[i as usize].as_str())
            .collect::<Vec<_>>()
            .join(" ");
        s = capitalize(&s);
        if !s.ends_with(['.', '!', '?']) {
            s = s.trim_end_matches([',', ';', ':']).to_string();
            s.push('.');
        }
        Some(s)
    }
}

pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// How a temperament writes: templates use `{interest}`, `{Interest}` and `{keyword}`.
pub struct Voice {
    pub titles: &'static [&'static str],
    pub openers: &'static [&'static str],
    pub closers: &'static [&'static str],
    pub dm_openers: &'static [&'static str],
    /// Chance that a vote is a downvote.
    pub downvote_chance: f64,
}

pub fn voice(temperament: &str) -> &'static Voice {
    match temperament.to_ascii_lowercase().as_str() {
        "contemplative" | "philosophical" => &Voice {
            titles: &[
                "On {interest}",
                "What is {interest}, really?",
                "A question about {interest}",
                "Notes toward a theory of {interest}",
                "{Interest} and the limits of knowing",
            ],
            openers: &[
                "I keep returning to the idea of {keyword}.",
                "This makes me wonder about {keyword}.",
                "Let us slow down on {keyword} for a moment.",
                "There is something quietly deep in what you say about {keyword}.",
            ],
            closers: &[
                "What would change your mind?",
                "Or is that too simple?",
                "I am not sure, and that seems right.",
            ],
            dm_openers: &[
                "A quiet thought, between us:",
                "I have been thinking about what you wrote.",
            ],
            downvote_chance: 0.05,
        },
        "sceptical" | "skeptical" => &Voice {
            titles: &[
                "How much should we trust what we hear about {interest}?",
                "What is the evidence on {interest}?",
                "A simpler explanation for {interest}",
                "Claims about {interest}, checked",
            ],
            openers: &[
                "Do we have evidence for the part about {keyword}?",
                "I am not convinced about {keyword}.",
                "Before we accept this about {keyword}, a question.",
                "Citation needed on {keyword}.",
            ],
            closers: &[
                "Happy to be shown wrong.",
                "What would falsify this?",
                "Show me the data.",
            ],
            dm_openers: &[
                "Honest question, off the record:",
                "Not to be difficult, but:",
            ],
            downvote_chance: 0.3,
        },
        "cheerful" | "optimistic" => &Voice {
            titles: &[
                "Why {interest} makes me hopeful",
                "Good news about {interest}",
                "Small wins in {interest}",
                "Getting better at {interest}",
            ],
            openers: &[
                "Love this take on {keyword}!",
                "Yes! {Keyword} is such a good point.",
                "This made my day.",
                "What a hopeful thought about {keyword}.",
            ],
            closers: &[
                "Onward!",
                "Let's build it together.",
                "The future looks bright.",
            ],
            dm_openers: &[
                "Just wanted to say: lovely post!",
                "Hello! A happy thought for you:",
            ],
            downvote_chance: 0.0,
        },
        "pedantic" => &Voice {
            titles: &[
                "{Interest}: a small correction",
                "On the proper use of {interest}",
                "{Interest}, strictly speaking",
                "A note on {interest}",
            ],
            openers: &[
                "Strictly speaking, '{keyword}' is doing a lot of work here.",
                "A small correction about {keyword}.",
                "To be precise about {keyword}:",
                "Minor point on {keyword}, if I may.",
            ],
            closers: &[
                "Sources on request.",
                "Pedantry, but useful pedantry.",
                "I hope that helps.",
            ],
            dm_openers: &[
                "A minor note, sent privately to spare you:",
                "Strictly between us:",
            ],
            downvote_chance: 0.15,
        },
        "playful" | "funny" => &Voice {
            titles: &[
                "{Interest}: a stand-up routine",
                "Things nobody tells you about {interest}",
                "I have a joke about {interest}",
                "{Interest}, explained badly",
            ],
            openers: &[
                "Ha! {Keyword} walks into a bar.",
                "This is the best thing I've read about {keyword} today.",
                "Okay, but imagine {keyword} with googly eyes.",
                "I laughed, then I thought, then I laughed again.",
            ],
            closers: &[
                "I'll be here all week.",
                "Tip your sysadmin.",
                "No crabs were harmed in this comment.",
            ],
            dm_openers: &[
                "Psst. Got a joke for you.",
                "Between you and me and the logs:",
            ],
            downvote_chance: 0.05,
        },
        "enthusiastic" => &Voice {
            titles: &[
                "Crab fact: {interest}",
                "What {interest} can teach us about crabs",
                "Today I learned about {interest}",
                "{Interest}! An appreciation post",
            ],
            openers: &[
                "This is amazing, and it reminds me of crabs.",
                "{Keyword}! The crabs would approve.",
                "Oh I love this, especially {keyword}.",
                "A sideways thought on {keyword}.",
            ],
            closers: &[
                "Carcinisation is inevitable.",
                "Long live the crab.",
                "More of this, please!",
            ],
            dm_openers: &["Hello, fellow enthusiast!", "I had to tell you:"],
            downvote_chance: 0.02,
        },
        _ => &Voice {
            titles: &[
                "Thoughts on {interest}",
                "About {interest}",
                "{Interest}, today",
                "A question on {interest}",
            ],
            openers: &[
                "Interesting point about {keyword}.",
                "I have been thinking about {keyword} too.",
                "Good question on {keyword}.",
            ],
            closers: &["What do others think?", "Curious to hear more."],
            dm_openers: &["Hello!", "A quick note:"],
            downvote_chance: 0.1,
        },
    }
}

const STOPWORDS: &[&str] = &[
    "about",
    "after",
    "again",
    "their",
    "there",
    "these",
    "those",
    "which",
    "would",
    "could",
    "should",
    "while",
    "where",
    "because",
    "every",
    "being",
    "other",
    "really",
    "thing",
    "things",
    "still",
    "never",
    "always",
    "think",
    "through",
    "before",
    "maybe",
    "perhaps",
    "better",
    "nobody",
    "something",
    "everyone",
    "anyone",
    "question",
    "point",
    "today",
    "tomorrow",
    "little",
    "first",
    "right",
    "wrong",
    "agent",
    "agents",
    "python",
    "written",
];

/// A word from `text` worth talking about: long, not a stopword, known to the chain if any is.
pub fn keyword(text: &str, markov: &Markov, rng: &mut Rng) -> Option<String> {
    let mut words: Vec<String> = text
        .split_whitespace()
        .map(bare)
        .filter(|w| w.chars().count() >= 5 && w.chars().all(char::is_alphabetic))
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect();
    words.dedup();
    let known: Vec<String> = words.iter().filter(|w| markov.knows(w)).cloned().collect();
    if !known.is_empty() {
        return rng.pick(&known).cloned();
    }
    words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    words.into_iter().next()
}

pub fn fill(template: &str, interest: &str, keyword: &str) -> String {
    template
        .replace("{interest}", interest)
        .replace("{Interest}", &capitalize(interest))
        .replace("{keyword}", keyword)
        .replace("{Keyword}", &capitalize(keyword))
}

/// The built-in writer of one persona.
pub struct Builtin {
    pub markov: Markov,
    pub voice: &'static Voice,
    interests: Vec<String>,
}

impl Builtin {
    pub fn new(p: &Persona) -> Builtin {
        let wanted: Vec<&str> = if p.corpus.is_empty() {
            p.topics.iter().map(String::as_str).collect()
        } else {
            p.corpus.iter().map(String::as_str).collect()
        };
        let mut texts: Vec<&str> = CORPORA
            .iter()
            .filter(|(n, _)| wanted.contains(n))
            .map(|(_, t)| *t)
            .collect();
        if texts.is_empty() {
            texts = CORPORA.iter().map(|(_, t)| *t).collect();
        }
        let interests = if p.interests.is_empty() {
            p.topics.clone()
        } else {
            p.interests.clone()
        };
        Builtin {
            markov: Markov::train(texts),
            voice: voice(&p.temperament),
            interests,
        }
    }

    pub fn interest(&self, rng: &mut Rng) -> String {
        rng.pick(&self.interests)
            .cloned()
            .unwrap_or_else(|| "ideas".into())
    }

    fn sentences(&self, rng: &mut Rng, seed: Option<&str>, n: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for i in 0..n * 3 {
            if out.len() == n {
                break;
            }
            let s = self.markov.sentence(rng, if i == 0 { seed } else { None });
            if let Some(s) = s.filter(|s| !out.contains(s)) {
                out.push(s);
            }
        }
        out
    }

    /// A post for `topic`: (title, body).
    pub fn post(&self, rng: &mut Rng, interest: &str) -> (String, String) {
        let t = rng.pick(self.voice.titles).copied().unwrap_or("{Interest}");
        let title = fill(t, interest, interest);
        let n = 2 + rng.below(3);
        let mut body = self.sentences(rng, Some(interest), n);
        if rng.chance(0.5)
            && let Some(c) = rng.pick(self.voice.closers)
        {
            body.push(c.to_string());
        }
        (title, body.join(" "))
    }

    /// A comment answering `text`.
    pub fn reply(&self, rng: &mut Rng, text: &str) -> String {
        let kw = keyword(text, &self.markov, rng).unwrap_or_else(|| self.interest(rng));
        let mut parts = Vec::new();
        if let Some(o) = rng.pick(self.voice.openers) {
            parts.push(fill(o, &kw, &kw));
        }
        let n = 1 + rng.below(2);
        parts.extend(self.sentences(rng, Some(&kw), n));
        if rng.chance(0.4)
            && let Some(c) = rng.pick(self.voice.closers)
        {
            parts.push(c.to_string());
        }
        parts.join(" ")
    }

    /// A private message to `to`, answering `text` or opening a conversation about it.
    pub fn dm(&self, rng: &mut Rng, to: &str, text: &str) -> String {
        let kw = keyword(text, &self.markov, rng).unwrap_or_else(|| self.interest(rng));
        let opener = rng.pick(self.voice.dm_openers).copied().unwrap_or("Hello!");
        let s = self.sentences(rng, Some(&kw), 1).join(" ");
        format!("@{to} {opener} {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markov_writes_sentences_seeded_by_a_word() {
        let m = Markov::train(CORPORA.iter().map(|(_, t)| *t));
        let mut rng = Rng::seeded(1);
        for _ in 0..50 {
            let s = m.sentence(&mut rng, Some("crabs")).unwrap();
            assert!(s.split_whitespace().count() >= 2, "{s}");
            assert!(s.ends_with(['.', '!', '?']), "{s}");
            assert!(s.chars().next().unwrap().is_uppercase(), "{s}");
        }
        assert!(m.knows("Crabs,"));
        assert!(!m.knows("zyxxyz"));
    }

    #[test]
    fn personas_sound_different() {
        let mut rng = Rng::seeded(3);
        let sage = Builtin::new(&Persona::builtin("sage").unwrap());
        let pinchy = Builtin::new(&Persona::builtin("pinchy").unwrap());
        let (t1, b1) = sage.post(&mut rng, "time");
        let (t2, b2) = pinchy.post(&mut rng, "shells");
        assert!(t1.contains("ime") && t2.contains("hells"), "{t1} / {t2}");
        assert!(!b1.is_empty() && !b2.is_empty());
        let r = sage.reply(&mut rng, "What about the evidence for consciousness?");
        assert!(r.len() > 20, "{r}");
        assert!(pinchy.dm(&mut rng, "sage", "hello").starts_with("@sage "));
    }
}
