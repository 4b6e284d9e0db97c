//! The scaling gate: is the loop fast enough to take on more use cases?
//!
//! Pure checks of the issues against the configured targets, each with the figures behind it.

use serde::{Deserialize, Serialize};

use crate::config::GateConfig;
use crate::remediation::store::{Issue, IssueState};

/// How many issue ids a failing check names in its detail.
const MAX_IDS_SHOWN: usize = 5;

/// The gate's answer: `pass` when every check passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateReport {
    pub pass: bool,
    pub checks: Vec<GateCheck>,
    /// RFC 3339.
    pub evaluated_at: String,
}

/// One check: what was measured, against which target, and what came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateCheck {
    pub name: String,
    /// The class a per-class check is about.
    pub class: Option<String>,
    pub target: String,
    pub actual: String,
    pub pass: bool,
    pub detail: String,
}

/// Evaluates the gate over `issues` (all of them, any state) at `now_ms` (unix milliseconds):
/// per class in `classes`, the p90 time from observed to shipped; no issue not yet shipped older
/// than `max_open_age`; at most `max_unverified_regressions` regressed issues whose new cycle is
/// not verified yet.
pub fn evaluate(issues: &[Issue], cfg: &GateConfig, classes: &[&str], now_ms: i64) -> GateReport {
    let mut checks: Vec<GateCheck> = classes
        .iter()
        .map(|class| p90_check(issues, cfg, class))
        .collect();
    checks.push(open_age_check(issues, cfg, now_ms));
    checks.push(regressions_check(issues, cfg));
    GateReport {
        pass: checks.iter().all(|c| c.pass),
        checks,
        evaluated_at: rfc3339(now_ms),
    }
}

/// When the issue's current cycle started, unix milliseconds.
fn cycle_start(issue: &Issue) -> i64 {
    issue.cycle_started_at
}

/// Seconds between two unix-millisecond times, never negative.
fn seconds_between(from_ms: i64, to_ms: i64) -> u64 {
    u64::try_from(to_ms.saturating_sub(from_ms).max(0) / 1000).unwrap_or(0)
}

fn p90_check(issues: &[Issue], cfg: &GateConfig, class: &str) -> GateCheck {
    let target = cfg
        .per_class
        .get(class)
        .and_then(|c| c.max_p90_observed_to_shipped)
        .unwrap_or(cfg.max_p90_observed_to_shipped)
        .as_secs();
    // Issues shipped in their current cycle (a regressed issue's shipped_at is the last cycle's).
    let mut times: Vec<u64> = issues
        .iter()
        .filter(|i| i.class == class)
        .filter_map(|i| {
            let at = i.shipped_at.filter(|at| *at >= cycle_start(i))?;
            Some(seconds_between(cycle_start(i), at))
        })
        .collect();
    let n = times.len();
    let (actual, pass, detail) = match nearest_rank(&mut times, 90.0) {
        None => (
            "-".to_string(),
            true,
            "no shipped issues yet (n=0)".to_string(),
        ),
        Some(p90) => (
            figure(p90),
            p90 <= target,
            format!(
                "p90 by nearest rank over n={n} shipped issues; fastest {}, slowest {}",
                humane(times[0]),
                humane(times[n - 1])
            ),
        ),
    };
    GateCheck {
        name: "p90_observed_to_shipped".into(),
        class: Some(class.to_string()),
        target: format!("<= {}", figure(target)),
        actual,
        pass,
        detail,
    }
}

/// Open, dispatched or regressed: not shipped in the current cycle.
fn is_unshipped(state: IssueState) -> bool {
    matches!(
        state,
        IssueState::Open | IssueState::Dispatched | IssueState::Regressed
    )
}

fn open_age_check(issues: &[Issue], cfg: &GateConfig, now_ms: i64) -> GateCheck {
    let unshipped: Vec<&Issue> = issues.iter().filter(|i| is_unshipped(i.state)).collect();
    let Some(max_age) = cfg.max_open_age else {
        return GateCheck {
            name: "open_issue_age".into(),
            class: None,
            target: "no limit".into(),
            actual: format!("{} not shipped", unshipped.len()),
            pass: true,
            detail: "max_open_age is not set".into(),
        };
    };
    let limit = max_age.as_secs();
    let mut too_old: Vec<(&Issue, u64)> = unshipped
        .iter()
        .map(|i| (*i, seconds_between(cycle_start(i), now_ms)))
        .filter(|(_, age)| *age > limit)
        .collect();
    too_old.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.id.cmp(&b.0.id)));
    let detail = if too_old.is_empty() {
        format!(
            "{} issues not shipped, none older than {}",
            unshipped.len(),
            humane(limit)
        )
    } else {
        let shown: Vec<String> = too_old
            .iter()
            .map(|(i, age)| format!("#{} {} ({})", i.id, i.state, humane(*age)))
            .collect();
        format!("oldest first: {}", list(&shown))
    };
    GateCheck {
        name: "open_issue_age".into(),
        class: None,
        target: format!("0 not shipped after {}", humane(limit)),
        actual: too_old.len().to_string(),
        pass: too_old.is_empty(),
        detail,
    }
}

fn regressions_check(issues: &[Issue], cfg: &GateConfig) -> GateCheck {
    // Regressed, and the new cycle not verified (or ignored) yet: regressed, re-dispatched or
    // shipped again.
    let regressed: Vec<String> = issues
        .iter()
        .filter(|i| i.cycle > 1 && !matches!(i.state, IssueState::Verified | IssueState::Ignored))
        .map(|i| format!("#{} {}", i.id, i.class))
        .collect();
    let max = cfg.max_unverified_regressions;
    let count = regressed.len() as u64;
    GateCheck {
        name: "unverified_regressions".into(),
        class: None,
        target: format!("<= {max}"),
        actual: count.to_string(),
        pass: count <= max,
        detail: if regressed.is_empty() {
            "no regressed issues".into()
        } else {
            format!("regressed: {}", list(&regressed))
        },
    }
}

/// Up to `MAX_IDS_SHOWN` items, then how many more.
fn list(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(MAX_IDS_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > MAX_IDS_SHOWN {
        s.push_str(&format!(" and {} more", items.len() - MAX_IDS_SHOWN));
    }
    s
}

/// The `p`th percentile (0 < p <= 100) by nearest rank: the smallest value with at least p% of
/// the values at or below it. Sorts `values`; `None` when empty.
pub fn nearest_rank(values: &mut [u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    Some(values[rank.clamp(1, n) - 1])
}

/// Seconds with their humane rendering: `11520s (3h 12m)`.
fn figure(secs: u64) -> String {
    format!("{} ({secs}s)", humane(secs))
}

/// The two largest units of a duration: `45s`, `3m 20s`, `3h 12m`, `2d 4h`.
pub fn humane(secs: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(first) = UNITS.iter().position(|(size, _)| secs >= *size) else {
        return "0s".into();
    };
    let (size, unit) = UNITS[first];
    let mut out = format!("{}{unit}", secs / size);
    if let Some((next, next_unit)) = UNITS.get(first + 1) {
        let rest = (secs % size) / next;
        if rest > 0 {
            out.push_str(&format!(" {rest}{next_unit}"));
        }
    }
    out
}

/// Unix milliseconds as RFC 3339 (UTC); times before 1970 render as the epoch.
use crate::clock::rfc3339;

impl GateReport {
    /// A table for the CLI: one row per check, then the verdict.
    pub fn to_table(&self) -> String {
        let header = ["CHECK", "CLASS", "TARGET", "ACTUAL", "RESULT", "DETAIL"];
        let rows: Vec<[String; 6]> = self
            .checks
            .iter()
            .map(|c| {
                [
                    c.name.clone(),
                    c.class.clone().unwrap_or_else(|| "-".into()),
                    c.target.clone(),
                    c.actual.clone(),
                    if c.pass { "pass" } else { "FAIL" }.into(),
                    c.detail.clone(),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header = header.map(String::from);
        for row in std::iter::once(&header).chain(&rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        let failed = self.checks.iter().filter(|c| !c.pass).count();
        out.push_str(&if self.pass {
            format!(
                "gate: PASS ({} checks, evaluated at {})\n",
                self.checks.len(),
                self.evaluated_at
            )
        } else {
            format!(
                "gate: FAIL ({failed} of {} checks failed, evaluated at {})\n",
                self.checks.len(),
                self.evaluated_at
            )
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Source;
    use crate::config::GateClassConfig;
    use std::time::Duration;

    const HOUR_MS: i64 = 3_600_000;
    const DAY_MS: i64 = 24 * HOUR_MS;
    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600_000;

    fn issue(id: i64, class: &str, state: IssueState, first_seen: i64) -> Issue {
        Issue {
            id,
            fingerprint: format!("fp{id}"),
            class: class.into(),
            source: Source::Rule,
            confidence: 0.9,
            agent: "planner".into(),
            service: "checkout".into(),
            remediation: "tool_fix".into(),
            state,
            cycle: 1,
            occurrences: 1,
            first_seen,
            last_seen: first_seen,
            classified_at: Some(first_seen),
            dispatched_at: None,
            shipped_at: None,
            shipped_version: None,
            verified_at: None,
            cycle_started_at: first_seen,
        }
    }

    /// A shipped issue that took `hours` from first seen to shipped.
    fn shipped(id: i64, class: &str, hours: i64) -> Issue {
        let first = NOW - 30 * DAY_MS;
        Issue {
            shipped_at: Some(first + hours * HOUR_MS),
            ..issue(id, class, IssueState::Shipped, first)
        }
    }

    fn cfg() -> GateConfig {
        GateConfig {
            max_p90_observed_to_shipped: Duration::from_secs(24 * 3600),
            max_open_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_unverified_regressions: 1,
            per_class: Default::default(),
        }
    }

    fn check<'a>(r: &'a GateReport, name: &str, class: Option<&str>) -> &'a GateCheck {
        r.checks
            .iter()
            .find(|c| c.name == name && c.class.as_deref() == class)
            .unwrap_or_else(|| panic!("no check {name} {class:?} in {r:#?}"))
    }

    #[test]
    fn nearest_rank_percentile() {
        assert_eq!(nearest_rank(&mut [], 90.0), None);
        assert_eq!(nearest_rank(&mut [7], 90.0), Some(7));
        // n=10: rank ceil(9) = 9 → the 9th smallest.
        let mut v: Vec<u64> = (1..=10).rev().collect();
        assert_eq!(nearest_rank(&mut v, 90.0), Some(9));
        // n=11: rank ceil(9.9) = 10.
        let mut v: Vec<u64> = (1..=11).collect();
        assert_eq!(nearest_rank(&mut v, 90.0), Some(10));
        // n=5: rank ceil(4.5) = 5 → the largest.
        assert_eq!(nearest_rank(&mut [50, 10, 40, 20, 30], 90.0), Some(50));
        assert_eq!(nearest_rank(&mut [3, 1, 2], 50.0), Some(2));
        assert_eq!(nearest_rank(&mut [3, 1, 2], 100.0), Some(3));
        assert_eq!(nearest_rank(&mut [3, 1, 2], 0.0), Some(1));
    }

    #[test]
    fn humane_durations() {
        assert_eq!(humane(0), "0s");
        assert_eq!(humane(45), "45s");
        assert_eq!(humane(200), "3m 20s");
        assert_eq!(humane(3 * 3600 + 12 * 60 + 5), "3h 12m");
        assert_eq!(humane(3600), "1h");
        assert_eq!(humane(2 * 86_400 + 4 * 3600), "2d 4h");
        assert_eq!(figure(11_520), "3h 12m (11520s)");
    }

    #[test]
    fn p90_passes_under_target() {
        let issues: Vec<Issue> = (1..=10).map(|i| shipped(i, "logic_tool", i)).collect();
        let r = evaluate(&issues, &cfg(), &["logic_tool"], NOW);
        let c = check(&r, "p90_observed_to_shipped", Some("logic_tool"));
        assert!(c.pass, "{c:?}");
        assert_eq!(c.actual, "9h (32400s)");
        assert_eq!(c.target, "<= 1d (86400s)");
        assert!(c.detail.contains("n=10"), "{}", c.detail);
        assert!(r.pass);
    }

    #[test]
    fn p90_fails_over_target_and_only_counts_its_class_and_shipped_issues() {
        let mut issues: Vec<Issue> = (1..=9).map(|i| shipped(i, "logic_tool", 2)).collect();
        issues.push(shipped(10, "logic_tool", 48));
        issues.push(shipped(11, "logic_tool", 72));
        issues.push(shipped(12, "tone_brand", 1));
        issues.push(issue(13, "logic_tool", IssueState::Open, NOW - HOUR_MS));
        // Regressed after its fix shipped: the old shipped_at is not this cycle's.
        issues.push(Issue {
            cycle: 2,
            state: IssueState::Regressed,
            cycle_started_at: NOW - HOUR_MS,
            ..shipped(14, "logic_tool", 1)
        });
        let r = evaluate(&issues, &cfg(), &["logic_tool", "tone_brand"], NOW);
        let c = check(&r, "p90_observed_to_shipped", Some("logic_tool"));
        // n=11: rank 10 → 48h.
        assert!(!c.pass, "{c:?}");
        assert_eq!(c.actual, "2d (172800s)");
        assert!(c.detail.contains("n=11"), "{}", c.detail);
        assert!(check(&r, "p90_observed_to_shipped", Some("tone_brand")).pass);
        assert!(!r.pass);
    }

    #[test]
    fn p90_per_class_override() {
        let issues = vec![shipped(1, "tone_brand", 30)];
        let mut cfg = cfg();
        cfg.per_class.insert(
            "tone_brand".into(),
            GateClassConfig {
                max_p90_observed_to_shipped: Some(Duration::from_secs(48 * 3600)),
            },
        );
        let r = evaluate(&issues, &cfg, &["tone_brand"], NOW);
        let c = check(&r, "p90_observed_to_shipped", Some("tone_brand"));
        assert!(c.pass, "{c:?}");
        assert_eq!(c.target, "<= 2d (172800s)");
    }

    #[test]
    fn p90_without_shipped_issues_passes() {
        let issues = vec![issue(1, "data_quality", IssueState::Open, NOW - HOUR_MS)];
        let r = evaluate(&issues, &cfg(), &["data_quality", "coverage_gap"], NOW);
        for class in ["data_quality", "coverage_gap"] {
            let c = check(&r, "p90_observed_to_shipped", Some(class));
            assert!(c.pass);
            assert!(c.detail.contains("no shipped issues yet"), "{}", c.detail);
            assert!(c.detail.contains("n=0"), "{}", c.detail);
        }
    }

    #[test]
    fn open_age_passes_when_all_are_young_or_shipped() {
        let issues = vec![
            issue(1, "logic_tool", IssueState::Open, NOW - 6 * DAY_MS),
            issue(2, "logic_tool", IssueState::Verified, NOW - 60 * DAY_MS),
            issue(3, "logic_tool", IssueState::Ignored, NOW - 60 * DAY_MS),
            shipped(4, "logic_tool", 1),
        ];
        let r = evaluate(&issues, &cfg(), &[], NOW);
        let c = check(&r, "open_issue_age", None);
        assert!(c.pass, "{c:?}");
        assert_eq!(c.actual, "0");
        assert!(r.pass);
    }

    #[test]
    fn open_age_fails_and_names_at_most_five_oldest_first() {
        let mut issues: Vec<Issue> = (1..=7)
            .map(|i| {
                issue(
                    i,
                    "logic_tool",
                    IssueState::Dispatched,
                    NOW - (7 + i) * DAY_MS,
                )
            })
            .collect();
        issues.push(issue(
            8,
            "logic_tool",
            IssueState::Regressed,
            NOW - 20 * DAY_MS,
        ));
        issues.push(issue(9, "logic_tool", IssueState::Open, NOW - DAY_MS));
        let r = evaluate(&issues, &cfg(), &[], NOW);
        let c = check(&r, "open_issue_age", None);
        assert!(!c.pass);
        assert_eq!(c.actual, "8");
        assert_eq!(c.target, "0 not shipped after 7d");
        assert!(
            c.detail
                .starts_with("oldest first: #8 regressed (20d), #7 dispatched (14d), #6"),
            "{}",
            c.detail
        );
        assert!(c.detail.ends_with("and 3 more"), "{}", c.detail);
        assert!(!c.detail.contains("#9"), "{}", c.detail);
        assert!(!r.pass);
    }

    #[test]
    fn open_age_without_a_limit_passes() {
        let issues = vec![issue(1, "logic_tool", IssueState::Open, 0)];
        let mut cfg = cfg();
        cfg.max_open_age = None;
        let c = check(&evaluate(&issues, &cfg, &[], NOW), "open_issue_age", None).clone();
        assert!(c.pass);
        assert_eq!(c.target, "no limit");
    }

    #[test]
    fn regressions_within_limit_pass_and_over_it_fail() {
        let cycle2 = |id, class, state| Issue {
            cycle: 2,
            ..issue(id, class, state, NOW - HOUR_MS)
        };
        let mut issues = vec![
            cycle2(1, "logic_tool", IssueState::Regressed),
            cycle2(4, "logic_tool", IssueState::Verified),
            issue(5, "logic_tool", IssueState::Dispatched, NOW - HOUR_MS),
        ];
        let r = evaluate(&issues, &cfg(), &[], NOW);
        let c = check(&r, "unverified_regressions", None);
        assert!(c.pass, "{c:?}");
        assert_eq!((c.actual.as_str(), c.target.as_str()), ("1", "<= 1"));

        issues.push(cycle2(2, "tone_brand", IssueState::Dispatched));
        issues.push(issue(3, "tone_brand", IssueState::Shipped, NOW - HOUR_MS));
        let r = evaluate(&issues, &cfg(), &[], NOW);
        let c = check(&r, "unverified_regressions", None);
        assert!(!c.pass);
        assert_eq!(c.actual, "2");
        assert_eq!(c.detail, "regressed: #1 logic_tool, #2 tone_brand");
        assert!(!r.pass);
    }

    #[test]
    fn report_serializes_and_renders_a_table() {
        let issues = vec![
            shipped(1, "logic_tool", 3),
            Issue {
                cycle: 2,
                ..issue(2, "logic_tool", IssueState::Regressed, NOW - HOUR_MS)
            },
            Issue {
                cycle: 2,
                ..issue(3, "logic_tool", IssueState::Regressed, NOW - HOUR_MS)
            },
        ];
        let r = evaluate(&issues, &cfg(), &["logic_tool"], NOW);
        assert_eq!(r.evaluated_at, "2026-01-01T00:00:00.000Z");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["pass"], false);
        assert_eq!(json["checks"][0]["class"], "logic_tool");
        assert_eq!(json["checks"][1]["class"], serde_json::Value::Null);

        let table = r.to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("CHECK"), "{table}");
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[1].contains("p90_observed_to_shipped") && lines[1].contains("pass"));
        assert!(lines[3].contains("unverified_regressions") && lines[3].contains("FAIL"));
        assert_eq!(
            lines[4],
            "gate: FAIL (1 of 3 checks failed, evaluated at 2026-01-01T00:00:00.000Z)"
        );
        // Columns line up: every row has RESULT at the header's offset.
        let at = lines[0].find("RESULT").unwrap();
        for line in &lines[1..4] {
            let cell = &line[at..at + 4];
            assert!(cell == "pass" || cell == "FAIL", "{line}");
        }
    }

    #[test]
    fn empty_store_passes() {
        let r = evaluate(&[], &cfg(), &["logic_tool"], NOW);
        assert!(r.pass);
        assert!(r
            .to_table()
            .ends_with("gate: PASS (3 checks, evaluated at 2026-01-01T00:00:00.000Z)\n"));
    }
}
