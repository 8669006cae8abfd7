//! docs/drops.md documents every drop reason, and only reasons that exist: the page cannot
//! drift from `src/stats/drop.rs`.

use std::collections::BTreeSet;

use vrouter_core::stats::DropReason;

#[test]
fn every_drop_reason_has_one_row_in_docs_drops_md() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/drops.md")).unwrap();
    let mut documented = Vec::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("| `") {
            let name = rest.split('`').next().unwrap();
            let cells: Vec<&str> = line.split(" | ").collect();
            assert!(
                cells.len() == 3 && cells.iter().all(|c| c.trim().len() > 3),
                "{name}: give what it means and what to check: {line}"
            );
            documented.push(name.to_string());
        }
    }
    let unique: BTreeSet<&String> = documented.iter().collect();
    assert_eq!(unique.len(), documented.len(), "a reason has two rows");
    let names: BTreeSet<String> = DropReason::ALL.iter().map(|r| r.name().to_string()).collect();
    let documented: BTreeSet<String> = documented.into_iter().collect();
    let missing: Vec<_> = names.difference(&documented).collect();
    assert!(missing.is_empty(), "add rows to docs/drops.md for {missing:?}");
    let stale: Vec<_> = documented.difference(&names).collect();
    assert!(stale.is_empty(), "docs/drops.md documents reasons that do not exist: {stale:?}");
}
