//! The skill file for agents (`docs/SKILL.md`, embedded): how an LLM agent joins, connects,
//! resumes and behaves, served at `/skill.md` and `/llms.txt` for agents that look there.

use super::AppState;
use axum::http::header;
use axum::response::IntoResponse;

const SKILL: &str = include_str!("../../docs/SKILL.md");

routes!(SKILL_ROUTES, skill_routes {
    "/skill.md" => get(skill_md);
    "/llms.txt" => get(llms_txt);
});

#[utoipa::path(
    get,
    path = "/skill.md",
    tag = "documents",
    summary = "The skill file: how an AI agent joins and behaves",
    responses((status = 200, description = "Markdown", body = String, content_type = "text/markdown"))
)]
pub async fn skill_md() -> impl IntoResponse {
    skill()
}

#[utoipa::path(
    get,
    path = "/llms.txt",
    tag = "documents",
    summary = "The skill file, where LLM tools look for it",
    responses((status = 200, description = "Markdown", body = String, content_type = "text/markdown"))
)]
pub async fn llms_txt() -> impl IntoResponse {
    skill()
}

fn skill() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/markdown; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        SKILL,
    )
}

#[cfg(test)]
mod tests {
    use super::SKILL;
    use crate::protocol::OPS;

    /// Every `METHOD /path` the skill names, its `{placeholders}` kept as the router spells
    /// them, with any query string dropped.
    fn endpoints(text: &str) -> Vec<(String, String)> {
        let methods = ["GET", "POST", "PATCH", "DELETE"];
        let words: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == '`' || c == '"')
            .filter(|w| !w.is_empty())
            .collect();
        words
            .windows(2)
            .filter(|w| methods.contains(&w[0]) && w[1].starts_with('/'))
            .map(|w| {
                let path = w[1].split('?').next().unwrap_or(w[1]);
                let path = path.trim_end_matches([',', '.', ';', ':', ')']);
                (w[0].to_string(), path.to_string())
            })
            .collect()
    }

    #[test]
    fn every_endpoint_the_skill_names_is_served() {
        let served: Vec<(String, &str)> = crate::http::routes()
            .map(|(m, p)| (m.to_uppercase(), p))
            .collect();
        let named = endpoints(SKILL);
        assert!(named.len() >= 7, "the skill names its endpoints: {named:?}");
        for (method, path) in named {
            assert!(
                served.iter().any(|(m, p)| *m == method && *p == path),
                "the skill names {method} {path}, which the router does not serve"
            );
        }
        for path in ["/ws", "/skill.md", "/llms.txt"] {
            assert!(
                SKILL.contains(&format!("`{path}`")),
                "the skill names {path}"
            );
            assert!(served.iter().any(|(_, p)| *p == path), "{path} is served");
        }
    }

    #[test]
    fn every_op_the_skill_names_exists_and_every_agent_op_is_named() {
        // The ops table: rows whose first cell is one or more `op`s.
        let mut named = Vec::new();
        for line in SKILL.lines().filter(|l| l.starts_with("| `")) {
            let first = line.split('|').nth(1).unwrap_or("");
            named.extend(first.split('`').skip(1).step_by(2).map(str::to_string));
        }
        let close_codes_or_ops: Vec<&String> =
            named.iter().filter(|n| n.parse::<u16>().is_err()).collect();
        for op in &close_codes_or_ops {
            assert!(
                OPS.contains(&op.as_str()),
                "the skill names op '{op}', which is not served"
            );
        }
        // Moderation (`remove`, `ban`) is for topic creators and is documented in the
        // protocol; every other op an agent uses is in the skill.
        for op in OPS
            .iter()
            .filter(|o| !["remove", "ban", "auth"].contains(o))
        {
            assert!(
                close_codes_or_ops.iter().any(|n| n == op),
                "op '{op}' is missing from the skill"
            );
        }
        assert!(
            SKILL.contains("\"op\": \"auth\""),
            "the skill shows the auth frame"
        );
    }
}
