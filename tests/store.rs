//! One store test suite, run against SQLite (a temp file) and PostgreSQL (a fresh schema per test).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use triage_loop::classify::Source;
use triage_loop::remediation::store::{
    self, FailureRecord, IssueFilter, IssueState, Store, StoreError, SAMPLE_CAP,
};

/// What each suite function gets: the store and the URL it was opened from.
struct Harness {
    store: Arc<dyn Store>,
    url: String,
}

fn record(fingerprint: &str, n: u64, observed_at: i64) -> FailureRecord {
    FailureRecord {
        trace_id: format!("{n:032x}"),
        root_span_id: format!("{n:016x}"),
        class: "logic_tool".into(),
        source: Source::Rule,
        confidence: 0.9,
        fingerprint: fingerprint.into(),
        remediation: "tool_fix".into(),
        agent: "planner".into(),
        service: "agent-svc".into(),
        service_version: Some("1.0.0".into()),
        observed_at,
        signal: json!({"kind": "exception", "type": "TimeoutError"}),
    }
}

// ---------------------------------------------------------------------------------------------
// The suite: each function runs once per backend.
// ---------------------------------------------------------------------------------------------

async fn upsert_counts_and_seen(h: Harness) {
    let s = &h.store;
    let a1 = s.record_failure(&record("fp-a", 1, 2_000)).await.unwrap();
    assert!(a1.new_issue && !a1.regressed);
    assert_eq!(
        (a1.occurrences, a1.cycle, a1.state),
        (1, 1, IssueState::Open)
    );

    let mut r = record("fp-a", 2, 1_000); // earlier than the first one: first_seen moves back
    r.agent = "writer".into();
    r.service_version = Some("1.1.0".into());
    let a2 = s.record_failure(&r).await.unwrap();
    assert_eq!(a2.issue_id, a1.issue_id);
    assert!(!a2.new_issue);
    assert_eq!(a2.occurrences, 2);

    let a3 = s.record_failure(&record("fp-a", 3, 5_000)).await.unwrap();
    assert_eq!(a3.occurrences, 3);

    let b = s.record_failure(&record("fp-b", 4, 3_000)).await.unwrap();
    assert!(b.new_issue);
    assert_ne!(b.issue_id, a1.issue_id);

    let d = s
        .get_issue(a1.issue_id, 2)
        .await
        .unwrap()
        .expect("issue exists");
    assert_eq!(d.issue.fingerprint, "fp-a");
    assert_eq!(d.issue.occurrences, 3);
    assert_eq!((d.issue.first_seen, d.issue.last_seen), (1_000, 5_000));
    assert_eq!(d.issue.classified_at, Some(2_000));
    assert_eq!(d.issue.source, Source::Rule);
    assert_eq!(d.agents, vec!["planner", "writer"]);
    assert_eq!(d.services, vec!["agent-svc"]);
    assert_eq!(d.versions, vec!["1.0.0", "1.1.0"]);
    assert_eq!(
        d.recent_occurrences.len(),
        2,
        "recent is capped by the argument"
    );
    assert_eq!(d.recent_occurrences[0].observed_at, 5_000);
    assert_eq!(d.recent_occurrences[0].trace_id, format!("{:032x}", 3));
    assert_eq!(d.recent_occurrences[0].signal["type"], "TimeoutError");
    assert_eq!(d.transitions.len(), 1);
    assert_eq!(d.transitions[0].from_state, None);
    assert_eq!(d.transitions[0].to_state, IssueState::Open);

    // The trace id sample stays bounded and keeps the newest.
    for n in 0..(SAMPLE_CAP as u64 + 5) {
        s.record_failure(&record("fp-c", 100 + n, 10_000 + n as i64))
            .await
            .unwrap();
    }
    let c = s.list_issues(&IssueFilter::default()).await.unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(c[0].fingerprint, "fp-c", "newest last_seen first");
    let dc = s.get_issue(c[0].id, 100).await.unwrap().unwrap();
    assert_eq!(dc.sample_trace_ids.len(), SAMPLE_CAP as usize);
    assert_eq!(
        dc.sample_trace_ids[0],
        format!("{:032x}", 100 + SAMPLE_CAP as u64 + 4)
    );
    assert_eq!(dc.recent_occurrences.len(), SAMPLE_CAP as usize + 5);

    // Filters.
    let by_agent = s
        .list_issues(&IssueFilter {
            agent: Some("planner".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_agent.len(), 3);
    let none = s
        .list_issues(&IssueFilter {
            class: Some("tone_brand".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let open = s
        .list_issues(&IssueFilter {
            state: Some(IssueState::Open),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(open.len(), 2);
    assert!(s.get_issue(999_999, 5).await.unwrap().is_none());
}

async fn concurrent_same_fingerprint(h: Harness) {
    const TASKS: u64 = 8;
    const EACH: u64 = 25;
    let mut joins = Vec::new();
    for t in 0..TASKS {
        let s = h.store.clone();
        joins.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..EACH {
                let n = t * 1000 + i;
                out.push(
                    s.record_failure(&record("fp-race", n, n as i64))
                        .await
                        .unwrap(),
                );
            }
            out
        }));
    }
    let mut outcomes = Vec::new();
    for j in joins {
        outcomes.extend(j.await.unwrap());
    }
    let ids: HashSet<i64> = outcomes.iter().map(|o| o.issue_id).collect();
    assert_eq!(ids.len(), 1, "one issue for one fingerprint");
    assert_eq!(outcomes.iter().filter(|o| o.new_issue).count(), 1);
    let counts: HashSet<i64> = outcomes.iter().map(|o| o.occurrences).collect();
    assert_eq!(
        counts.len() as u64,
        TASKS * EACH,
        "every count handed out once"
    );
    let id = *ids.iter().next().unwrap();
    let d = h.store.get_issue(id, 1_000).await.unwrap().unwrap();
    assert_eq!(d.issue.occurrences as u64, TASKS * EACH);
    assert_eq!(d.recent_occurrences.len() as u64, TASKS * EACH);
    assert_eq!(d.transitions.len(), 1);
}

async fn lifecycle_transitions(h: Harness) {
    let s = &h.store;
    let id = s
        .record_failure(&record("fp-l", 1, 1_000))
        .await
        .unwrap()
        .issue_id;

    let err = s
        .transition(id, IssueState::Shipped, 1_500, "skip ahead", Some("2.0"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidTransition {
                from: IssueState::Open,
                to: IssueState::Shipped,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("open -> shipped"), "{err}");

    s.transition(id, IssueState::Dispatched, 2_000, "dispatched", None)
        .await
        .unwrap();
    s.transition(id, IssueState::Shipped, 3_000, "fix shipped", Some("2.0"))
        .await
        .unwrap();
    let t = s
        .transition(id, IssueState::Verified, 4_000, "quiet for 24h", None)
        .await
        .unwrap();
    assert_eq!(t.from_state, Some(IssueState::Shipped));

    let d = s.get_issue(id, 0).await.unwrap().unwrap();
    assert_eq!(d.issue.state, IssueState::Verified);
    assert_eq!(d.issue.dispatched_at, Some(2_000));
    assert_eq!(d.issue.shipped_at, Some(3_000));
    assert_eq!(d.issue.shipped_version.as_deref(), Some("2.0"));
    assert_eq!(d.issue.verified_at, Some(4_000));
    let path: Vec<_> = d.transitions.iter().map(|t| (t.to_state, t.at)).collect();
    assert_eq!(
        path,
        vec![
            (IssueState::Open, 1_000),
            (IssueState::Dispatched, 2_000),
            (IssueState::Shipped, 3_000),
            (IssueState::Verified, 4_000),
        ]
    );
    assert_eq!(d.transitions[2].reason, "fix shipped");

    s.transition(id, IssueState::Ignored, 5_000, "won't fix", None)
        .await
        .unwrap();
    assert!(matches!(
        s.transition(id, IssueState::Ignored, 5_001, "again", None)
            .await,
        Err(StoreError::InvalidTransition { .. })
    ));
    assert!(matches!(
        s.transition(424_242, IssueState::Dispatched, 1, "nope", None)
            .await,
        Err(StoreError::IssueNotFound(424_242))
    ));
    // A refused transition stores nothing.
    let d = s.get_issue(id, 0).await.unwrap().unwrap();
    assert_eq!(d.transitions.len(), 5);
}

async fn regression_bumps_cycle(h: Harness) {
    let s = &h.store;
    let id = s
        .record_failure(&record("fp-r", 1, 1_000))
        .await
        .unwrap()
        .issue_id;
    s.transition(id, IssueState::Dispatched, 2_000, "d", None)
        .await
        .unwrap();
    s.transition(id, IssueState::Shipped, 3_000, "s", Some("2.0"))
        .await
        .unwrap();
    // A recurrence before shipping would not regress; after shipping it does.
    let o = s.record_failure(&record("fp-r", 2, 3_500)).await.unwrap();
    assert!(o.regressed && !o.new_issue);
    assert_eq!(
        (o.cycle, o.state, o.occurrences),
        (2, IssueState::Regressed, 2)
    );
    // Further recurrences stay in the same cycle.
    let o = s.record_failure(&record("fp-r", 3, 3_600)).await.unwrap();
    assert!(!o.regressed);
    assert_eq!((o.cycle, o.state), (2, IssueState::Regressed));

    let t = s
        .transition(id, IssueState::Dispatched, 4_000, "cycle 2", None)
        .await
        .unwrap();
    assert_eq!(t.cycle, 2);
    s.transition(id, IssueState::Shipped, 5_000, "s2", Some("2.1"))
        .await
        .unwrap();
    s.transition(id, IssueState::Verified, 6_000, "v", None)
        .await
        .unwrap();
    // Regression from verified, this time decided by the verifier.
    let t = s
        .transition(id, IssueState::Regressed, 7_000, "recurred on 2.1", None)
        .await
        .unwrap();
    assert_eq!(t.cycle, 3);

    let d = s.get_issue(id, 0).await.unwrap().unwrap();
    assert_eq!(d.issue.cycle, 3);
    let regs: Vec<_> = d
        .transitions
        .iter()
        .filter(|t| t.to_state == IssueState::Regressed)
        .map(|t| (t.from_state, t.cycle, t.at))
        .collect();
    assert_eq!(
        regs,
        vec![
            (Some(IssueState::Shipped), 2, 3_500),
            (Some(IssueState::Verified), 3, 7_000)
        ]
    );
    let first_regression = d
        .transitions
        .iter()
        .find(|t| t.to_state == IssueState::Regressed)
        .unwrap();
    assert!(
        first_regression.reason.contains(&format!("{:032x}", 2)),
        "{first_regression:?}"
    );
}

async fn outbox_idempotency_and_claims(h: Harness) {
    let s = &h.store;
    let id = s
        .record_failure(&record("fp-o", 1, 1_000))
        .await
        .unwrap()
        .issue_id;
    let payload = json!({"title": "TimeoutError in planner", "n": 1});

    let e1 = s
        .enqueue_dispatch(id, 1, "webhook", &payload, 10_000)
        .await
        .unwrap();
    assert!(e1.created);
    let e1b = s
        .enqueue_dispatch(id, 1, "webhook", &json!({"other": true}), 10_500)
        .await
        .unwrap();
    assert_eq!((e1b.dispatch_id, e1b.created), (e1.dispatch_id, false));
    let e2 = s
        .enqueue_dispatch(id, 1, "jsonl", &payload, 10_000)
        .await
        .unwrap();
    let e3 = s
        .enqueue_dispatch(id, 2, "webhook", &payload, 20_000)
        .await
        .unwrap();
    assert!(e2.created && e3.created);
    assert_eq!(
        HashSet::from([e1.dispatch_id, e2.dispatch_id, e3.dispatch_id]).len(),
        3
    );

    // Only what is due is claimed, and a claim leases it.
    let c = s.claim_due_dispatches(10_000, 10, 1_000).await.unwrap();
    assert_eq!(
        c.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![e1.dispatch_id, e2.dispatch_id]
    );
    assert!(c.iter().all(|d| d.attempts == 1));
    assert_eq!(c[0].payload, payload, "the first payload wins");
    assert_eq!(
        c[0].idempotency_key,
        store::idempotency_key(id, 1, "webhook")
    );
    assert!(s
        .claim_due_dispatches(10_500, 10, 1_000)
        .await
        .unwrap()
        .is_empty());

    s.mark_failed(e1.dispatch_id, 10_600, "HTTP 500")
        .await
        .unwrap();
    s.mark_delivered(e2.dispatch_id, 10_700).await.unwrap();
    s.mark_delivered(e2.dispatch_id, 99_999).await.unwrap(); // idempotent

    let c = s.claim_due_dispatches(10_600, 10, 1_000).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].id, c[0].attempts), (e1.dispatch_id, 2));
    assert_eq!(c[0].last_error.as_deref(), Some("HTTP 500"));
    // Lease runs out (the claimer "crashed"): it is claimed again, with e3 now due too.
    let c = s.claim_due_dispatches(20_000, 10, 1_000).await.unwrap();
    assert_eq!(
        c.iter().map(|d| (d.id, d.attempts)).collect::<Vec<_>>(),
        vec![(e1.dispatch_id, 3), (e3.dispatch_id, 1)]
    );
    s.mark_delivered(e1.dispatch_id, 20_100).await.unwrap();
    s.mark_delivered(e3.dispatch_id, 20_100).await.unwrap();
    assert!(s
        .claim_due_dispatches(1_000_000, 10, 1_000)
        .await
        .unwrap()
        .is_empty());

    // Errors say what is wrong.
    assert!(matches!(
        s.mark_delivered(777_777, 1).await,
        Err(StoreError::DispatchNotFound(777_777))
    ));
    assert!(matches!(
        s.mark_failed(777_777, 1, "x").await,
        Err(StoreError::DispatchNotFound(777_777))
    ));
    assert!(matches!(
        s.enqueue_dispatch(888_888, 1, "webhook", &payload, 1).await,
        Err(StoreError::IssueNotFound(888_888))
    ));
    assert!(matches!(
        s.enqueue_dispatch(id, 1, "", &payload, 1).await,
        Err(StoreError::Invalid(_))
    ));

    // Concurrent claimers never get the same dispatch.
    for n in 0..20 {
        s.enqueue_dispatch(id, 10 + n, "webhook", &payload, 50_000)
            .await
            .unwrap();
    }
    let mut joins = Vec::new();
    for _ in 0..4 {
        let s = h.store.clone();
        joins.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let c = s.claim_due_dispatches(50_000, 3, 60_000).await.unwrap();
                if c.is_empty() {
                    return got;
                }
                got.extend(c.into_iter().map(|d| d.id));
            }
        }));
    }
    let mut all = Vec::new();
    for j in joins {
        all.extend(j.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (20, 20));
}

async fn migrations_applied_once(h: Harness) {
    assert_eq!(h.store.schema_version().await.unwrap(), 1);
    let id = h
        .store
        .record_failure(&record("fp-m", 1, 1_000))
        .await
        .unwrap()
        .issue_id;
    // Reopening (a restart, or a second instance) applies nothing and keeps the data.
    for _ in 0..2 {
        let again = store::open(&h.url).await.unwrap();
        assert_eq!(again.schema_version().await.unwrap(), 1);
        let d = again.get_issue(id, 5).await.unwrap().unwrap();
        assert_eq!(d.issue.occurrences, 1);
    }
    // Two instances opening at once both succeed.
    let (a, b) = tokio::join!(store::open(&h.url), store::open(&h.url));
    assert_eq!(a.unwrap().schema_version().await.unwrap(), 1);
    assert_eq!(b.unwrap().schema_version().await.unwrap(), 1);
}

async fn bad_input_is_refused(h: Harness) {
    let s = &h.store;
    let mut r = record("fp-x", 1, 1);
    r.trace_id = "not-hex".into();
    let e = s.record_failure(&r).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid(_)) && e.to_string().contains("trace_id"),
        "{e}"
    );
    let mut r = record("fp-x", 1, 1);
    r.confidence = f64::NAN;
    assert!(matches!(
        s.record_failure(&r).await,
        Err(StoreError::Invalid(_))
    ));
    let mut r = record("", 1, 1);
    r.fingerprint.clear();
    assert!(matches!(
        s.record_failure(&r).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(s
        .list_issues(&IssueFilter::default())
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Backends.
// ---------------------------------------------------------------------------------------------

async fn sqlite_harness() -> (tempfile::TempDir, Harness) {
    let dir = tempfile::tempdir().unwrap();
    // A parent directory that does not exist yet: open() creates it.
    let url = format!("sqlite://{}/triage-data/triage.db", dir.path().display());
    let store = store::open(&url).await.unwrap();
    (dir, Harness { store, url })
}

fn pg_base_url() -> String {
    std::env::var("TRIAGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs `test` against a fresh schema of the test PostgreSQL, or prints SKIPPED when there is none.
async fn with_postgres<F, Fut>(name: &str, test: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    static N: AtomicU64 = AtomicU64::new(0);
    let base = pg_base_url();
    let admin = match tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio_postgres::connect(&base, tokio_postgres::NoTls),
    )
    .await
    {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            client
        }
        Ok(Err(e)) => {
            println!("SKIPPED: PostgreSQL not reachable at {base}: {e} ({name})");
            return;
        }
        Err(_) => {
            println!("SKIPPED: PostgreSQL not reachable at {base}: timed out ({name})");
            return;
        }
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let schema = format!(
        "t_{}_{}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = store::open(&url).await.unwrap();
    // Run on its own task so the schema is dropped even when the test fails.
    let result = tokio::spawn(test(Harness { store, url })).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Declares one `#[tokio::test]` per backend for each suite function.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (_dir, h) = super::sqlite_harness().await;
                    super::$name(h).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::with_postgres(stringify!($name), super::$name).await;
                }
            )*
        }
    };
}

suite!(
    upsert_counts_and_seen,
    concurrent_same_fingerprint,
    lifecycle_transitions,
    regression_bumps_cycle,
    outbox_idempotency_and_claims,
    migrations_applied_once,
    bad_input_is_refused,
);

#[tokio::test]
async fn open_refuses_bad_urls() {
    for (url, want) in [
        ("mysql://x/y", "expected sqlite://PATH or postgres://"),
        ("sqlite://", "no file path"),
        ("postgres://u:secret@[bad", "invalid storage URL"),
    ] {
        let err = match store::open(url).await {
            Ok(_) => panic!("{url} opened"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{url}: {err}");
        assert!(!err.contains("secret"), "password leaked: {err}");
    }
}

#[tokio::test]
async fn unreachable_postgres_says_where() {
    let err = match store::open("postgres://postgres@127.0.0.1:1/test?connect_timeout=2").await {
        Ok(_) => panic!("port 1 answered"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("connecting to PostgreSQL at postgres://postgres@127.0.0.1:1/test"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("refused"),
        "the cause is shown: {err}"
    );
}
