//! The search modes and reciprocal rank fusion (RRF) of the full-text and vector rankings.
//! RRF scores each item `Σ 1 / (k + rank)` over the rankings it appears in (rank from 1),
//! with k = 60 (Cormack, Clarke and Büttcher, 2009). It needs no calibration between bm25
//! or `ts_rank` and cosine similarity, and an item high in either ranking stays high: when
//! the model makes nothing of a query, the full-text hits still lead the fused list.

use std::collections::HashMap;

/// RRF's k: how much the first places weigh over the rest.
pub const RRF_K: f64 = 60.0;

/// How many of each ranking are fused.
pub const FUSE_DEPTH: usize = 50;

/// How a search ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// Full-text and vector rankings fused.
    Hybrid,
    /// The vector ranking alone.
    Semantic,
    /// Full-text search alone (every word must match).
    Text,
}

impl SearchMode {
    pub fn parse(s: &str) -> Option<SearchMode> {
        match s {
            "hybrid" => Some(SearchMode::Hybrid),
            "semantic" => Some(SearchMode::Semantic),
            "text" => Some(SearchMode::Text),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Hybrid => "hybrid",
            SearchMode::Semantic => "semantic",
            SearchMode::Text => "text",
        }
    }
}

/// One fused result: the item, its RRF score, and its place in the full-text ranking (from
/// 0) if it was there.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    pub id: String,
    pub score: f64,
    pub text_rank: Option<usize>,
}

/// Fuses two rankings (ids, best first), best first; ties keep the full-text order first.
pub fn fuse<'a>(
    text: impl IntoIterator<Item = &'a str>,
    semantic: impl IntoIterator<Item = &'a str>,
) -> Vec<Fused> {
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<Fused> = Vec::new();
    let mut add = |id: &'a str, rank: usize, from_text: bool| {
        let s = 1.0 / (RRF_K + rank as f64 + 1.0);
        let i = *by_id.entry(id).or_insert_with(|| {
            out.push(Fused {
                id: id.to_string(),
                score: 0.0,
                text_rank: None,
            });
            out.len() - 1
        });
        out[i].score += s;
        if from_text && out[i].text_rank.is_none() {
            out[i].text_rank = Some(rank);
        }
    };
    for (r, id) in text.into_iter().enumerate() {
        add(id, r, true);
    }
    for (r, id) in semantic.into_iter().enumerate() {
        add(id, r, false);
    }
    // A stable sort: equal scores keep first-seen order, full-text hits first.
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_in_both_rankings_rise_and_single_ranking_items_interleave() {
        let f = fuse(["a", "b", "c"], ["c", "d", "a"]);
        let ids: Vec<&str> = f.iter().map(|x| x.id.as_str()).collect();
        // a: 1/61 + 1/63; c: 1/63 + 1/61: a tie, full-text order first.
        assert_eq!(ids, ["a", "c", "b", "d"]);
        assert!((f[0].score - (1.0 / 61.0 + 1.0 / 63.0)).abs() < 1e-12);
        assert_eq!(f[0].text_rank, Some(0));
        assert_eq!(f[1].text_rank, Some(2));
        assert_eq!(f[3].text_rank, None);
    }

    #[test]
    fn an_empty_vector_ranking_keeps_the_full_text_order() {
        let f = fuse(["x", "y", "z"], []);
        let ids: Vec<&str> = f.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids, ["x", "y", "z"]);
        let g = fuse([], ["p", "q"]);
        assert_eq!(g[0].id, "p");
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [SearchMode::Hybrid, SearchMode::Semantic, SearchMode::Text] {
            assert_eq!(SearchMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(SearchMode::parse("HYBRID"), None);
        assert_eq!(SearchMode::parse(""), None);
    }
}
