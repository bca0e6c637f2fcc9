//! `mobilus-jepsen`: run a test, check a history, draw a report.

fn main() {}
