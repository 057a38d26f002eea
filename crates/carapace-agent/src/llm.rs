//! Text from an OpenAI-compatible chat-completions endpoint (`--llm-url`): one POST per
//! text, over the same minimal plain-HTTP client as the rest of the crate (no TLS: point it
//! at a local model server or a local proxy). The key comes from `CARAPACE_LLM_API_KEY`.

use carapace_client::{self as client, ClientError};
use serde_json::json;
use std::time::Duration;
use thiserror::Error;

pub const API_KEY_ENV: &str = "CARAPACE_LLM_API_KEY";

#[derive(Debug, Error)]
pub enum LlmError {
    #[error("request failed: {0}")]
    Http(#[from] ClientError),
    #[error("endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unexpected answer: {0}")]
    Shape(String),
}

#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// `http://host:port/v1` (then `/chat/completions` is appended) or the full endpoint URL.
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
}

impl LlmConfig {
    pub fn new(url: &str, model: &str) -> LlmConfig {
        LlmConfig {
            url: url.to_string(),
            model: model.to_string(),
            api_key: std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty()),
            timeout: Duration::from_secs(60),
        }
    }
}

pub struct Llm {
    base: String,
    path: String,
    cfg: LlmConfig,
}

impl Llm {
    pub fn new(cfg: LlmConfig) -> Result<Llm, LlmError> {
        let url = cfg.url.trim_end_matches('/');
        let url = if url.ends_with("/chat/completions") {
            url.to_string()
        } else {
            format!("{url}/chat/completions")
        };
        let (base, path) = client::split_url(&url)?;
        Ok(Llm { base, path, cfg })
    }

    /// One chat completion: the assistant's text, trimmed.
    pub async fn complete(
        &self,
        system: &str,
        user: &str,
        max_tokens: u32,
    ) -> Result<String, LlmError> {
        let body = json!({
            "model": self.cfg.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "max_tokens": max_tokens,
            "temperature": 0.9,
        });
        let auth = self.cfg.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let r = client::request(
            &self.base,
            "POST",
            &self.path,
            &headers,
            Some(&body),
            self.cfg.timeout,
        )
        .await?;
        if r.status != 200 {
            return Err(LlmError::Status {
                status: r.status,
                body: carapace_client::wire::truncate(&r.body.to_string(), 200).to_string(),
            });
        }
        let text = r.body["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| LlmError::Shape("no choices[0].message.content".into()))?;
        let text = strip_thinking(text).trim().to_string();
        if text.is_empty() {
            return Err(LlmError::Shape("empty completion".into()));
        }
        Ok(text)
    }
}

/// Reasoning models may prefix their answer with `<think>...</think>`; agents post only the
/// answer.
fn strip_thinking(s: &str) -> &str {
    match s.find("</think>") {
        Some(i) if s.trim_start().starts_with("<think>") => &s[i + "</think>".len()..],
        _ => s,
    }
}

/// Splits a completion into (title, body): the first non-empty line (without a `Title:`
/// label, markdown hashes or quotes) and the rest.
pub fn title_and_body(text: &str) -> (String, String) {
    let mut lines = text.lines().map(str::trim).skip_while(|l| l.is_empty());
    let first = lines.next().unwrap_or("");
    let first = first.trim_start_matches('#').trim();
    let first = first
        .strip_prefix("Title:")
        .or_else(|| first.strip_prefix("title:"))
        .or_else(|| first.strip_prefix("**Title:**"))
        .unwrap_or(first)
        .trim()
        .trim_matches(['"', '*', '\''])
        .trim();
    let rest: Vec<&str> = lines.collect();
    let body = rest.join("\n").trim().to_string();
    let body = body
        .strip_prefix("Body:")
        .map(|b| b.trim().to_string())
        .unwrap_or(body);
    (first.to_string(), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_titles_and_strips_thinking() {
        assert_eq!(
            title_and_body("Title: \"On crabs\"\n\nThey walk sideways.\nAlways."),
            ("On crabs".into(), "They walk sideways.\nAlways.".into())
        );
        assert_eq!(
            title_and_body("# Big news\nBody: yes"),
            ("Big news".into(), "yes".into())
        );
        assert_eq!(strip_thinking("<think>hmm</think> Hi"), " Hi");
        assert_eq!(strip_thinking("Hi </think>"), "Hi </think>");
    }

    #[test]
    fn endpoint_url_is_completed_once() {
        let l = Llm::new(LlmConfig::new("http://127.0.0.1:9/v1/", "m")).unwrap();
        assert_eq!(
            (l.base.as_str(), l.path.as_str()),
            ("http://127.0.0.1:9", "/v1/chat/completions")
        );
        let l = Llm::new(LlmConfig::new("http://h:1/x/chat/completions", "m")).unwrap();
        assert_eq!(l.path, "/x/chat/completions");
        assert!(Llm::new(LlmConfig::new("https://api.example.com/v1", "m")).is_err());
    }
}
