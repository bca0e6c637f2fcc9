//! Listings of a directory the holder knows whole: answered from its cache in inode
//! order, and resumed at the same place when the cache no longer can.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::delegation::{
    drop_kernel_caches, holder_with_a_warm_cache, must_answer_with_metadata_paused,
    must_have_no_write_backs, must_log,
};

/// The names one `getdents64` of at most 4 KiB reads from `dir` ("." and ".." left out),
/// and whether their cookies are those of a listing in inode order (bit 62).
fn must_getdents(dir: &std::fs::File) -> (Vec<String>, bool) {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut raw = rustix::fs::RawDir::new(dir, &mut buf);
    let (mut names, mut local) = (Vec::new(), false);
    while let Some(entry) = raw.next() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_str().unwrap().to_string();
        if name != "." && name != ".." {
            local = entry.next_entry_cookie() & (1 << 62) != 0;
            names.push(name);
        }
        // One call's worth: what the kernel gave is all read.
        if raw.is_buffer_empty() {
            break;
        }
    }
    (names, local)
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// The holder lists a directory it made and filled (3,000 creates, 100 unlinks) from its
/// cache, with every metadata member paused. A listing read slowly across a recall (a
/// second mount of the site creates a file there, and the handle's batch outlives its
/// TTL) goes on where it stopped, from the metadata's listing put in the same order:
/// every name once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_holder_lists_what_it_made_and_a_listing_read_across_a_recall_goes_on() {
    let (sites, a1, meta) = holder_with_a_warm_cache(&[]).await;
    let many = a1.point.join("app/many");
    std::fs::create_dir(&many).unwrap();
    let mut expected: BTreeSet<String> = (0..3_000).map(|i| format!("file-{i:05}")).collect();
    for n in &expected {
        std::fs::File::create(many.join(n)).unwrap();
    }
    let removed: Vec<String> = expected.iter().step_by(30).cloned().collect();
    for n in &removed {
        std::fs::remove_file(many.join(n)).unwrap();
        expected.remove(n);
    }

    let dir = many.clone();
    let listed = must_answer_with_metadata_paused(
        &sites,
        &a1.point.join("app"),
        |_| {
            // Every create and unlink answered here committed first (an fsync of the
            // directory makes them): one still in flight leaves its name unsure.
            std::fs::File::open(&many).unwrap().sync_all().unwrap();
            drop_kernel_caches();
        },
        move |_| names_in(&dir),
    );
    assert_eq!(
        listed.len(),
        expected.len(),
        "a name listed twice or missed"
    );
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), expected);
    must_have_no_write_backs(&a1);

    // Read a few hundred names (a small buffer a call, not glibc's: it takes a whole
    // listing of this size in one), then lose the delegation and let the handle's batch
    // age past its TTL before reading on. The listing must start from the cache, in inode
    // order: a change whose answer the cache did not record (a create that waited for
    // a commit across a renewal, on a loaded machine) leaves the directory known whole
    // only after its next listing and change, so add a file until it does.
    let mut seen = Vec::new();
    let mut listing = None;
    for n in 0..5 {
        let late = format!("late-{n}");
        std::fs::File::create(many.join(&late)).unwrap();
        expected.insert(late);
        must_have_no_write_backs(&a1);
        drop_kernel_caches();
        let dir = std::fs::File::open(&many).unwrap();
        let (mut names, mut local) = (Vec::new(), false);
        while names.len() < 300 {
            let (more, in_order) = must_getdents(&dir);
            names.extend(more);
            local = in_order;
        }
        if local {
            (seen, listing) = (names, Some(dir));
            break;
        }
        // Read to the end: the metadata's listing, now cached whole.
        while !must_getdents(&dir).0.is_empty() {}
    }
    let listing = listing.expect("the holder never listed the directory from its cache");
    let before = seen.len();
    let a2 = sites.mount("site-a");
    std::fs::write(a2.point.join("app/many/from-a2"), b"a2").unwrap();
    must_log(
        &a1,
        "gave the subtree's delegation back",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(1_500));
    loop {
        let (more, _) = must_getdents(&listing);
        if more.is_empty() {
            break;
        }
        seen.extend(more);
    }
    let mut once: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        once.len(),
        seen.len(),
        "a name listed twice across the recall"
    );
    // Made during the listing: it may be listed or not.
    once.remove("from-a2");
    assert_eq!(once, expected, "names missed across the recall");
    assert!(
        a1.log()
            .contains("a listing in inode order goes on from the metadata's"),
        "read {before} names before the recall, {} after, none of them from the metadata",
        seen.len() - before
    );
    // Listed afresh after the recall: from the metadata, a2's file in it.
    let now: BTreeSet<String> = names_in(&many).into_iter().collect();
    assert!(now.contains("from-a2") && now.len() == expected.len() + 1);
    let report = meta.fsck().await.unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
}
