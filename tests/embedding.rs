//! The embedding model in-process: the real all-MiniLM-L6-v2 against values computed by the
//! reference implementation (tests/data/embedding_reference.json), texts over the model's
//! length, and model directories that are missing a file or hold a malformed one (the real
//! binary must refuse to start, naming the file).

mod common;

use carapace::search::embedding::{EmbedError, Embedder, Priority, Vector};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOLERANCE: f32 = 1e-3;

#[derive(Deserialize)]
struct Reference {
    model: String,
    dim: usize,
    pairs: Vec<Pair>,
}

#[derive(Deserialize)]
struct Pair {
    kind: String,
    a: String,
    b: String,
    cosine: f32,
    a_head: Vec<f32>,
    b_head: Vec<f32>,
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/embedding_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// Every pair's cosine and both heads against the reference; the largest deviation seen.
fn compare(reference: &Reference, embed: impl Fn(&str) -> Vector) -> f32 {
    let mut worst = 0f32;
    for pair in &reference.pairs {
        let (a, b) = (embed(&pair.a), embed(&pair.b));
        assert_eq!(a.len(), reference.dim);
        for v in [&a, &b] {
            assert!((norm(v) - 1.0).abs() < 1e-5, "not unit length: {}", norm(v));
        }
        let cosine = dot(&a, &b);
        let off = (cosine - pair.cosine).abs();
        assert!(
            off < TOLERANCE,
            "{} pair {:?} / {:?}: cosine {cosine}, reference {}",
            pair.kind,
            pair.a.chars().take(40).collect::<String>(),
            pair.b.chars().take(40).collect::<String>(),
            pair.cosine
        );
        worst = worst.max(off);
        for (v, head, text) in [(&a, &pair.a_head, &pair.a), (&b, &pair.b_head, &pair.b)] {
            for (i, (x, r)) in v.iter().zip(head).enumerate() {
                let off = (x - r).abs();
                assert!(
                    off < TOLERANCE,
                    "{} {:?}: component {i} is {x}, reference {r}",
                    pair.kind,
                    text.chars().take(40).collect::<String>()
                );
                worst = worst.max(off);
            }
        }
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_the_reference_implementation_alone_and_in_batches() {
    let reference = reference();
    let embedder = Embedder::load(&common::model::embedding_model_dir()).unwrap();
    assert_eq!(embedder.model_id(), reference.model);
    assert_eq!(embedder.dim(), reference.dim);

    // One batch of every sentence: short texts padded up to the long ones (cut at 256).
    let texts: Vec<String> = reference
        .pairs
        .iter()
        .flat_map(|p| [p.a.clone(), p.b.clone()])
        .collect();
    let batched = embedder.embed(&texts).await.unwrap();
    assert_eq!(batched.len(), texts.len());
    let worst = compare(&reference, |t| {
        batched[texts.iter().position(|x| x == t).unwrap()].clone()
    });
    println!("batched: largest deviation from the reference {worst:.2e}");

    // One text at a time: no padding at all.
    let worst = compare(&reference, |t| {
        embedder
            .embed_blocking(&[t.to_string()], Priority::Background)
            .unwrap()
            .remove(0)
    });
    println!("one by one: largest deviation from the reference {worst:.2e}");

    // The two long texts differ only after the 256th word piece: cut, not refused.
    let long = reference.pairs.iter().find(|p| p.kind == "long").unwrap();
    let both = embedder
        .embed(&[long.a.clone(), long.b.clone()])
        .await
        .unwrap();
    assert!(dot(&both[0], &both[1]) > 0.9999);
    assert!(embedder.embed(&[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_or_odd_text_is_embedded_not_refused() {
    let embedder = Embedder::load(&common::model::embedding_model_dir()).unwrap();
    let texts = vec![
        "word ".repeat(20_000),
        String::new(),
        "\u{0}\u{feff}\u{202e} 🦀🦀🦀 \t\n".into(),
        "x".repeat(5_000),
    ];
    let vectors = embedder.embed(&texts).await.unwrap();
    assert_eq!(vectors.len(), 4);
    for v in &vectors {
        assert_eq!(v.len(), 384);
        assert!((norm(v) - 1.0).abs() < 1e-5);
        assert!(v.iter().all(|x| x.is_finite()));
    }
}

/// Concurrent callers queue behind one another and each gets its own texts' vectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_get_their_own_vectors() {
    let embedder =
        std::sync::Arc::new(Embedder::load(&common::model::embedding_model_dir()).unwrap());
    let texts: Vec<String> = (0..8)
        .map(|i| format!("agent number {i} posted about topic {}", i * 7))
        .collect();
    let alone = embedder.embed(&texts).await.unwrap();
    let tasks: Vec<_> = texts
        .iter()
        .map(|t| {
            let embedder = embedder.clone();
            let t = t.clone();
            tokio::spawn(async move { embedder.embed(&[t]).await.unwrap().remove(0) })
        })
        .collect();
    for (task, expected) in tasks.into_iter().zip(&alone) {
        let got = task.await.unwrap();
        assert!(dot(&got, expected) > 0.9999);
    }
}

/// A directory beside the real model's: every file linked except `without`, and `replace`
/// written in place of the named files.
fn model_copy(tag: &str, without: &[&str], replace: &[(&str, &[u8])]) -> PathBuf {
    let src = common::model::embedding_model_dir();
    let dst = common::temp_dir(tag);
    link_tree(&src, &dst, Path::new(""), without);
    for (file, bytes) in replace {
        let path = dst.join(file);
        let _ = std::fs::remove_file(&path);
        std::fs::write(path, bytes).unwrap();
    }
    dst
}

fn link_tree(src: &Path, dst: &Path, rel: &Path, without: &[&str]) {
    for entry in std::fs::read_dir(src.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        if without.iter().any(|w| Path::new(w) == rel) {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(dst.join(&rel)).unwrap();
            link_tree(src, dst, &rel, without);
        } else {
            std::os::unix::fs::symlink(src.join(&rel), dst.join(&rel)).unwrap();
        }
    }
}

fn load_error(dir: &Path) -> EmbedError {
    match Embedder::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn each_missing_or_malformed_file_is_named() {
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        let dir = model_copy("embed-missing", &[file], &[]);
        let e = load_error(&dir);
        assert!(
            matches!(&e, EmbedError::MissingFile { file: f, .. } if f == file),
            "without {file}: {e}"
        );
        assert!(e.to_string().contains(file), "{e}");
    }

    let cases: &[(&str, &[u8], &str)] = &[
        ("config.json", b"{\"hidden_size\": 384,", "config.json"),
        (
            "config.json",
            b"{\"model_type\": \"xlm-roberta\"}",
            "xlm-roberta",
        ),
        (
            "tokenizer.json",
            b"{\"version\": \"1.0\"}",
            "tokenizer.json",
        ),
        ("modules.json", b"[]", "Transformer"),
        (
            "modules.json",
            br#"[{"type": "sentence_transformers.models.Transformer", "path": ""},
                 {"type": "sentence_transformers.models.Pooling", "path": "../../etc"}]"#,
            "leaves the model directory",
        ),
        (
            "1_Pooling/config.json",
            br#"{"word_embedding_dimension": 384, "pooling_mode_max_tokens": true}"#,
            "1_Pooling/config.json",
        ),
        (
            "1_Pooling/config.json",
            br#"{"word_embedding_dimension": 768, "pooling_mode_mean_tokens": true}"#,
            "768",
        ),
        ("model.safetensors", &[7u8; 100], "model.safetensors"),
        (
            "sentence_bert_config.json",
            b"max_seq_length: 256",
            "sentence_bert_config.json",
        ),
    ];
    for (file, bytes, expect) in cases {
        let dir = model_copy("embed-malformed", &[], &[(file, bytes)]);
        let e = load_error(&dir);
        assert!(
            matches!(e, EmbedError::Malformed { .. }),
            "{file} = {:?}: {e}",
            String::from_utf8_lossy(bytes)
        );
        assert!(e.to_string().contains(expect), "{file}: {e}");
    }

    let e = load_error(Path::new("/nonexistent/model"));
    assert!(matches!(e, EmbedError::NotADirectory { .. }), "{e}");
}

/// `carapace serve --embedding-model DIR` with a bad DIR exits at once, naming the file.
fn serve_fails(dir: &Path, expect: &str) {
    let data = common::temp_dir("embed-serve");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--embedding-model")
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the hub kept running with the model dir {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "exit {status}: {said}");
    assert!(said.contains(expect), "expected {expect:?} in: {said}");
}

#[test]
fn the_hub_refuses_to_start_on_a_bad_model_dir() {
    let missing = model_copy("embed-no-tokenizer", &["tokenizer.json"], &[]);
    serve_fails(&missing, "tokenizer.json is missing from");
    let corrupt = model_copy("embed-corrupt-config", &[], &[("config.json", b"{\"hidd")]);
    serve_fails(&corrupt, "config.json is malformed");
    serve_fails(Path::new("/nonexistent/model"), "is not a directory");
}

/// App::build loads the model once and hands it to the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_loads_the_model_for_the_service() {
    let dir = common::model::embedding_model_dir();
    let hub = common::start_with(|c| c.embedding_model = Some(dir)).await;
    let service = &hub.app.as_ref().unwrap().service;
    let embedder = &service
        .semantic
        .as_ref()
        .expect("the service has the model")
        .embedder;
    assert_eq!(embedder.model_id(), "all-MiniLM-L6-v2");
    let v = embedder
        .embed(&["hermit crabs swap shells".into()])
        .await
        .unwrap();
    assert_eq!(v[0].len(), 384);

    let plain = common::start().await;
    assert!(plain.app.as_ref().unwrap().service.semantic.is_none());
}
