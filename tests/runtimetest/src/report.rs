//! The output: one line per check, `ok`, `not ok` or `skip`.

/// Collects the outcome of every check and prints each as it comes.
#[derive(Debug, Default)]
pub struct Report {
    failed: usize,
    passed: usize,
    skipped: usize,
}

impl Report {
    /// A check that held.
    pub fn ok(&mut self, check: &str) {
        self.passed += 1;
        println!("ok {check}");
    }

    /// A check that did not hold.
    pub fn fail(
        &mut self,
        check: &str,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Display,
    ) {
        self.failed += 1;
        println!("not ok {check}: expected {expected}, got {got}");
    }

    /// A check that could not be made at all (the probe itself failed).
    pub fn error(&mut self, check: &str, reason: impl std::fmt::Display) {
        self.failed += 1;
        println!("not ok {check}: {reason}");
    }

    /// A check that does not apply here.
    pub fn skip(&mut self, check: &str, reason: impl std::fmt::Display) {
        self.skipped += 1;
        println!("skip {check}: {reason}");
    }

    /// `ok` when `expected == got`, `not ok` with both otherwise.
    pub fn expect_eq<T: PartialEq + std::fmt::Debug>(&mut self, check: &str, expected: T, got: T) {
        if expected == got {
            self.ok(check);
        } else {
            self.fail(check, format!("{expected:?}"), format!("{got:?}"));
        }
    }

    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.failed > 0
    }

    /// The closing summary line.
    pub fn summary(&self) -> String {
        format!(
            "# {} ok, {} not ok, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}
