//! Namespace behaviour that the model test does not reach: big directories and paging.

use std::collections::BTreeSet;

use mobilus_meta::namespace::Namespace;
use mobilus_meta::types::{Command, Op, OpReply};
use mobilus_proto::fs::{FileKind, ROOT_INO};

fn must(ns: &Namespace, op: Op) -> OpReply {
    ns.execute(&Command { time_ns: 1, fence: None, op }).expect("store").expect("op")
}

fn mknod(parent: u64, name: String) -> Op {
    Op::Mknod { parent, name: name.into_bytes(), kind: FileKind::Regular, mode: 0o644, uid: 0, gid: 0, rdev: 0 }
}

#[test]
fn a_directory_of_100k_entries_pages_exactly_once_each_while_it_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::open(tmp.path()).unwrap();
    let OpReply::Attr(dir) = must(&ns, Op::Mkdir { parent: ROOT_INO, name: b"big".to_vec(), mode: 0o755, uid: 0, gid: 0 }) else {
        panic!("mkdir")
    };
    let n = 100_000;
    for i in 0..n {
        must(&ns, mknod(dir.ino, format!("f{i:06}")));
    }
    let mut seen = BTreeSet::new();
    let mut cookie = 0;
    let mut pages = 0;
    let mut removed = BTreeSet::new();
    loop {
        let (page, eof) = ns.readdir(dir.ino, cookie, 1000, false).unwrap();
        pages += 1;
        for e in &page {
            let name = String::from_utf8(e.name.clone()).unwrap();
            assert!(seen.insert(name.clone()), "{name} listed twice");
            assert!(!removed.contains(&name), "{name} listed after it was removed");
            assert!(e.cookie > cookie, "cookies must increase");
            cookie = e.cookie;
        }
        if eof {
            break;
        }
        // Meanwhile: remove an entry not listed yet, and add a new one.
        if pages <= 10 {
            let victim = format!("f{:06}", n - pages);
            must(&ns, Op::Unlink { parent: dir.ino, name: victim.clone().into_bytes() });
            removed.insert(victim);
            must(&ns, mknod(dir.ino, format!("new{pages}")));
        }
    }
    assert_eq!(seen.len(), n - removed.len() + 10, "entries listed");
    assert!((100..=102).contains(&pages), "{pages} pages");
    for i in 1..=10 {
        assert!(seen.contains(&format!("new{i}")), "an entry added during the listing was missed");
    }
    assert_eq!(ns.getattr(dir.ino).unwrap().nlink, 2);
    assert_eq!(ns.statfs().unwrap().files, 2 + (n - 10 + 10) as u64);
}
