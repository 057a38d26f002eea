//! Says what is wrong with a request's JSON (a command's fields, an HTTP body, a query
//! string) in the API's own words. Serde's messages name Rust types (`i8`, `struct
//! PostInput`) and parser positions; clients get the field, and what it must be.

/// Explains a deserialization failure; `what` is the input's name (`'post' command`,
/// `body`, `query`).
pub fn explain(what: &str, serde_message: &str) -> String {
    let msg = serde_message.trim();
    // serde_path_to_error puts the failing field's path first: `a.b: invalid type: ...`.
    let (path, msg) = match msg.split_once(": ") {
        Some((p, rest))
            if !p.is_empty()
                && !p.contains(' ')
                && p.chars().all(|c| c.is_alphanumeric() || "._[]".contains(c)) =>
        {
            (Some(p), rest)
        }
        _ => (None, msg),
    };
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    if let Some(field) = between(msg, "missing field `", "`") {
        return format!("invalid {what}: '{}' is required", join(path, field));
    }
    if let Some(field) = between(msg, "unknown field `", "`") {
        return format!(
            "invalid {what}: '{}' is not accepted here",
            join(path, field)
        );
    }
    let expected = msg.rsplit_once(", expected ").map(|(_, e)| plain(e));
    match (msg.starts_with("invalid "), path, expected) {
        (true, Some(p), Some(e)) => format!("invalid {what}: '{p}' must be {e}"),
        (true, Some(p), None) => format!("invalid {what}: '{p}' has the wrong type or value"),
        (true, None, Some(e)) => format!("invalid {what}: it must be {e}"),
        (true, None, None) => format!("invalid {what}: a field has the wrong type or value"),
        _ => format!("invalid {what}: malformed JSON"),
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = s.split_once(start)?.1;
    Some(rest.split_once(end)?.0)
}

/// The field's full name; the path may already end with it (an unknown field's does).
fn join(path: Option<&str>, field: &str) -> String {
    match path {
        Some(p) if p == field || p.ends_with(&format!(".{field}")) => p.to_string(),
        Some(p) => format!("{p}.{field}"),
        None => field.to_string(),
    }
}

/// Serde's name of an expected type, as a client would say it.
fn plain(expected: &str) -> String {
    let e = expected.trim().trim_end_matches('.');
    match e {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "an integer in range".into()
        }
        "f32" | "f64" => "a number".into(),
        "a boolean" | "a string" | "a number" => e.into(),
        "a sequence" => "a list".into(),
        "a map" => "an object".into(),
        _ if e.starts_with("struct ") || e.starts_with("a map") => "an object".into(),
        _ if e.starts_with("a string or") || e.starts_with("an integer") => e.into(),
        _ => "of another type".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::explain;

    #[test]
    fn serde_messages_become_the_apis_words() {
        let cases = [
            (
                "missing field `title` at line 1 column 30",
                "invalid 'post' command: 'title' is required",
            ),
            (
                "unknown field `color`, expected one of `topic`, `title`",
                "invalid 'post' command: 'color' is not accepted here",
            ),
            (
                "value: invalid type: string \"x\", expected i8",
                "invalid 'post' command: 'value' must be an integer in range",
            ),
            (
                "value: invalid value: integer `300`, expected i8",
                "invalid 'post' command: 'value' must be an integer in range",
            ),
            (
                "scopes: invalid type: string \"read\", expected a sequence",
                "invalid 'post' command: 'scopes' must be a list",
            ),
            (
                "invalid type: integer `5`, expected struct PostInput",
                "invalid 'post' command: it must be an object",
            ),
            (
                "expected value at line 1 column 1",
                "invalid 'post' command: malformed JSON",
            ),
        ];
        for (serde, ours) in cases {
            assert_eq!(explain("'post' command", serde), ours, "{serde}");
        }
        for (serde, _) in cases {
            let out = explain("body", serde);
            for word in ["i8", "struct", "sequence", "line 1", "column"] {
                assert!(!out.contains(word), "{out}");
            }
        }
    }
}
