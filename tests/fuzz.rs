//! The bounded fuzz run (`fuzz/run.sh`) as part of `cargo test`, so CI runs the README's one test
//! command: it runs only when `TRIAGE_FUZZ_SECONDS` is set (seconds per target; `.ci/run` sets
//! it), and says SKIPPED otherwise. Without cargo-fuzz it fails when `TRIAGE_REQUIRE_FUZZ=1`,
//! else says SKIPPED.

use std::process::Command;

#[test]
fn every_fuzz_target_runs_its_bounded_time_without_a_crash() {
    let Ok(secs) = std::env::var("TRIAGE_FUZZ_SECONDS") else {
        eprintln!("SKIPPED: the bounded fuzz run needs TRIAGE_FUZZ_SECONDS=N (seconds per target)");
        return;
    };
    let secs: u32 = secs
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("TRIAGE_FUZZ_SECONDS={secs:?} is not a number of seconds"));
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        assert!(
            std::env::var("TRIAGE_REQUIRE_FUZZ").as_deref() != Ok("1"),
            "cargo-fuzz is required (TRIAGE_REQUIRE_FUZZ=1) but `cargo fuzz` does not run; \
             install it with `cargo install cargo-fuzz --locked`"
        );
        eprintln!("SKIPPED: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/fuzz/run.sh"))
        .arg(secs.to_string())
        .current_dir(root)
        // The fuzz crate has its own target directory; the test's own must not leak into it.
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("fuzz/run.sh starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "fuzz/run.sh {secs} failed:\n{text}");
    eprintln!("{text}");
}
