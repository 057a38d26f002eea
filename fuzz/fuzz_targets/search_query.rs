//! The search-query sanitiser on hostile text: whatever a client types, the FTS5 query it
//! makes is only quoted words (at most 16), and SQLite's FTS5 accepts it, so no search can
//! fail with a syntax error or reach FTS5's operators and column filters.

#![no_main]

use carapace::store::fts5_query;
use libfuzzer_sys::fuzz_target;
use sqlx::{Connection, SqliteConnection};
use std::sync::{LazyLock, Mutex};
use tokio::runtime::Runtime;

struct Fixture {
    rt: Runtime,
    db: Mutex<SqliteConnection>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let db = rt.block_on(async {
        let mut db = SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("sqlite");
        sqlx::query("CREATE VIRTUAL TABLE posts_fts USING fts5(title, body)")
            .execute(&mut db)
            .await
            .expect("fts5 table");
        sqlx::query("INSERT INTO posts_fts VALUES ('hermit crabs', 'swap shells as they grow')")
            .execute(&mut db)
            .await
            .expect("a row");
        db
    });
    Fixture {
        rt,
        db: Mutex::new(db),
    }
});

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    let Some(fts) = fts5_query(q) else {
        return;
    };
    let words: Vec<&str> = fts.split(' ').collect();
    assert!(words.len() <= 16, "{} words", words.len());
    for w in &words {
        let inner = w
            .strip_prefix('"')
            .and_then(|w| w.strip_suffix('"'))
            .unwrap_or_else(|| panic!("not a quoted word: {w:?}"));
        assert!(
            !inner.is_empty() && inner.chars().all(char::is_alphanumeric),
            "not a word: {inner:?}"
        );
    }
    let f = &*FIXTURE;
    let mut db = f.db.lock().expect("one input at a time");
    let r = f.rt.block_on(
        sqlx::query("SELECT count(*) FROM posts_fts WHERE posts_fts MATCH ?")
            .bind(&fts)
            .fetch_one(&mut *db),
    );
    if let Err(e) = r {
        panic!("FTS5 refused {fts:?} (from {q:?}): {e}");
    }
});
