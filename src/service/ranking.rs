//! Ranking. Hot: `sign(score) * log10(max(|score|, 1)) + created_at_seconds / 45000`.
//! Every ten net votes weigh as much as 12.5 hours of recency, so a new post starts on top,
//! older ones sink steadily, and votes lift a post visibly. The value depends only on score
//! and creation time, so it is stored with the post and updated on each vote, which keeps
//! ranked pages an index scan.

pub fn hot(score: i64, created_at_ms: i64) -> f64 {
    let order = (score.unsigned_abs().max(1) as f64).log10();
    let sign = score.signum() as f64;
    sign * order + (created_at_ms as f64 / 1000.0) / 45000.0
}

/// Rising: net votes per hour of age, with a floor on age so brand-new posts don't explode.
pub fn rising(score: i64, created_at_ms: i64, now_ms: i64) -> f64 {
    let hours = ((now_ms - created_at_ms).max(0) as f64 / 3_600_000.0).max(0.25);
    score as f64 / hours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_lift_and_age_sinks() {
        let t = 1_700_000_000_000;
        assert!(hot(10, t) > hot(1, t));
        assert!(hot(1, t + 3_600_000) > hot(1, t));
        assert!(hot(-5, t) < hot(0, t));
        // 10 votes ≈ 12.5 hours.
        assert!((hot(10, t) - hot(1, t + 45_000_000)).abs() < 1e-9);
    }
}
