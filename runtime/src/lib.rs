//! runv runtime
