use mobilus_client::{chunker, Client};
use mobilus_proto::fs::{FileKind, ROOT_INO};
use proptest::prelude::*;

use crate::cluster::TwoSites;

pub(crate) use mobilus_proto::noise::noise;

pub(crate) async fn must_create(c: &Client, name: &str) -> u64 {
    c.meta()
        .mknod(
            ROOT_INO,
            name.as_bytes(),
            FileKind::Regular,
            0o644,
            0,
            0,
            0,
            None,
        )
        .await
        .unwrap()
        .ino
}

pub(crate) async fn must_write(c: &Client, ino: u64, data: &[u8]) {
    let mut w = c.writer(ino);
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        w.write((i << 20) as u64, piece).await.unwrap();
    }
    w.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn written_at_one_site_read_at_the_other_faulting_chunks_over_once() {
    let sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let b = sites.client("site-b").await;
    let data = noise(12 << 20, 1);
    let ino = must_create(&a, "f").await;
    must_write(&a, ino, &data).await;
    assert_eq!(a.read(ino, 0, data.len() as u64).await.unwrap(), data);
    assert_eq!(a.stats().remote_fetches, 0);

    assert_eq!(b.read(ino, 0, data.len() as u64).await.unwrap(), data);
    let fetched = b.stats().remote_fetches;
    assert!(fetched >= 3, "12 MiB is several chunks: {fetched}");
    let b_node = b.local().stats().await.unwrap();
    assert_eq!(
        b_node.remote_fetches, fetched,
        "site-b's node counts each cached chunk once"
    );
    assert_eq!(
        b_node.bytes,
        data.len() as u64,
        "site-b now holds the chunks"
    );
    // A second read, and a partial one, are local.
    assert_eq!(b.read(ino, 0, data.len() as u64).await.unwrap(), data);
    assert_eq!(
        b.read(ino, 5_000_000, 1000).await.unwrap(),
        data[5_000_000..5_001_000].to_vec()
    );
    assert_eq!(b.stats().remote_fetches, fetched);
    // A sequential reader in odd-sized steps returns the same bytes.
    let reader = b.reader(ino);
    let mut seen = Vec::new();
    let mut off = 0;
    while off < data.len() as u64 {
        let got = reader.read(off, 300_000).await.unwrap();
        assert!(!got.is_empty());
        off += got.len() as u64;
        seen.extend(got);
    }
    assert_eq!(seen, data);
    // Reads past the end are clamped; beyond it they are empty.
    assert_eq!(
        b.read(ino, data.len() as u64 - 10, 100)
            .await
            .unwrap()
            .len(),
        10
    );
    assert!(b
        .read(ino, data.len() as u64 + 1, 100)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_bytes_are_stored_and_sent_once_and_an_edit_resends_only_its_chunks() {
    let sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let data = noise(64 << 20, 2);
    let f1 = must_create(&a, "one").await;
    must_write(&a, f1, &data).await;
    let first = a.stats();
    assert_eq!(first.bytes_sent, data.len() as u64);
    let stored = a.local().stats().await.unwrap().bytes;

    let f2 = must_create(&a, "two").await;
    must_write(&a, f2, &data).await;
    let second = a.stats();
    assert_eq!(
        second.bytes_sent, first.bytes_sent,
        "a second copy sent bytes"
    );
    assert_eq!(
        a.local().stats().await.unwrap().bytes,
        stored,
        "a second copy stored bytes"
    );
    assert_eq!(a.read(f2, 0, data.len() as u64).await.unwrap(), data);

    let mut edited = data.clone();
    for b in &mut edited[32 << 20..33 << 20] {
        *b ^= 0xa5;
    }
    let f3 = must_create(&a, "three").await;
    must_write(&a, f3, &edited).await;
    let resent = a.stats().bytes_sent - second.bytes_sent;
    assert!(
        resent > 0 && resent <= 10 << 20,
        "a 1 MiB edit re-sent {resent} bytes"
    );
    assert_eq!(a.read(f3, 0, edited.len() as u64).await.unwrap(), edited);
    println!("dedup: 64 MiB written 3 times (once with 1 MiB changed): sent {} bytes, edit re-sent {resent}", a.stats().bytes_sent);
}

/// Writes `data` from `from` at 1 MiB a write, without flushing.
async fn must_buffer(w: &mut mobilus_client::FileWriter, data: &[u8], from: usize) {
    for at in (from..data.len()).step_by(1 << 20) {
        let end = (at + (1 << 20)).min(data.len());
        w.write(at as u64, &data[at..end]).await.unwrap();
    }
}

/// Waits until `done` holds, or fails with `what` after 20 s.
async fn must_see(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A growing sequential run's settled chunks are stored before its flush
/// (`client::ahead`), each byte sent once; a run whose early stores failed (its data node
/// was down) still commits whole once the node is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_growing_run_is_stored_ahead_once_and_commits_whole_after_ahead_failed() {
    let mut sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let data = noise(40 << 20, 5);
    let ino = must_create(&a, "ahead").await;
    let mut w = a.writer(ino);
    must_buffer(&mut w, &data[..12 << 20], 0).await;
    must_see("chunks stored before the flush", || {
        a.stats().bytes_sent > 0
    })
    .await;
    must_buffer(&mut w, &data, 12 << 20).await;
    let (_, slices) = w.flush().await.unwrap().expect("a commit");
    // The chunks a cut of the whole gives (so an identical file deduplicates, whatever
    // the timing of its writes).
    let committed: Vec<_> = slices
        .iter()
        .flat_map(|s| &s.chunks)
        .map(|c| c.hash)
        .collect();
    let whole: Vec<_> = chunker::chunk(&data).iter().map(|p| p.hash).collect();
    assert_eq!(committed, whole, "chunks cut ahead differ from the whole's");
    let stats = a.stats();
    assert_eq!(
        stats.bytes_sent,
        data.len() as u64,
        "a byte sent twice, or never"
    );
    assert_eq!(
        stats.chunks_deduped, 0,
        "its own chunks counted as deduplicated"
    );
    assert_eq!(a.read(ino, 0, data.len() as u64).await.unwrap(), data);

    // The node is down while a run grows: its stores ahead fail, the writes do not, and
    // the run's flush, with the node back, stores what they did not.
    let other = noise(20 << 20, 6);
    let ino = must_create(&a, "ahead-failed").await;
    let mut w = a.writer(ino);
    let small = must_create(&a, "flushed-while-down").await;
    let mut down = a.writer(small);
    sites.data[0].kill();
    must_buffer(&mut w, &other, 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    must_buffer(&mut down, &other[..1 << 20], 0).await;
    assert!(down.flush().await.is_err(), "a flush with its node down");
    sites.data[0].restart();
    w.flush().await.unwrap();
    assert_eq!(a.read(ino, 0, other.len() as u64).await.unwrap(), other);
    down.flush().await.unwrap();
    assert_eq!(a.read(small, 0, 1 << 20).await.unwrap(), &other[..1 << 20]);
}

/// Many files written at once hold no more than the client's write budget together: a
/// writer that finds it spent commits its own buffer (`client::budget`), and every file
/// still reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_together_hold_no_more_than_the_write_budget() {
    let sites = TwoSites::start().await;
    let budget = 8 << 20;
    let opts = mobilus_client::DataOptions {
        write_buffer_bytes: budget,
        ..Default::default()
    };
    let a = sites.client_with("site-a", opts).await;
    let files: Vec<Vec<u8>> = (0..4).map(|i| noise(6 << 20, 20 + i)).collect();
    let mut writers = Vec::new();
    for i in 0..files.len() {
        let ino = must_create(&a, &format!("budget-{i}")).await;
        writers.push((ino, a.writer(ino)));
    }
    let mut most = 0;
    for at in (0..6 << 20).step_by(1 << 20) {
        for ((_, w), data) in writers.iter_mut().zip(&files) {
            w.write(at as u64, &data[at..at + (1 << 20)]).await.unwrap();
            most = most.max(a.buffered_bytes());
            assert!(
                a.buffered_bytes() <= budget,
                "{} bytes buffered over a budget of {budget}",
                a.buffered_bytes()
            );
        }
    }
    assert!(most > budget / 2, "the budget was never approached: {most}");
    let committed = a.meta().getattr(writers[0].0, false).await.unwrap().size;
    assert!(committed > 0, "nothing committed before the flush");
    for ((ino, w), data) in writers.iter_mut().zip(&files) {
        w.flush().await.unwrap();
        assert_eq!(&a.read(*ino, 0, data.len() as u64).await.unwrap(), data);
    }
    assert_eq!(a.buffered_bytes(), 0);

    // A writer dropped with bytes buffered (its file's writes discarded) gives them back.
    let ino = must_create(&a, "budget-dropped").await;
    let mut w = a.writer(ino);
    w.write(0, &files[0][..4096]).await.unwrap();
    assert_eq!(a.buffered_bytes(), 4096);
    drop(w);
    assert_eq!(a.buffered_bytes(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn random_overwrites_read_back_like_a_local_file(
        writes in proptest::collection::vec((0u64..3_000_000, 1usize..700_000, any::<u64>(), any::<bool>()), 1..12)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let sites = TwoSites::start().await;
            let a = sites.client("site-a").await;
            let b = sites.client("site-b").await;
            let ino = must_create(&a, "f").await;
            let mut reference: Vec<u8> = Vec::new();
            let mut w = a.writer(ino);
            for (offset, len, seed, flush) in &writes {
                let bytes = noise(*len, *seed);
                let end = *offset as usize + len;
                if reference.len() < end {
                    reference.resize(end, 0);
                }
                reference[*offset as usize..end].copy_from_slice(&bytes);
                w.write(*offset, &bytes).await.unwrap();
                if *flush {
                    w.flush().await.unwrap();
                }
            }
            w.flush().await.unwrap();
            let n = reference.len() as u64;
            prop_assert_eq!(a.read(ino, 0, n).await.unwrap(), reference.clone());
            prop_assert_eq!(b.read(ino, 0, n).await.unwrap(), reference);
            Ok(())
        })?;
    }
}

/// Every chunk file under a data node's `chunks/` folder.
pub fn chunk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_corrupted_at_one_site_is_never_returned_and_is_repaired_from_the_other() {
    let sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let b = sites.client("site-b").await;
    let data = noise(3 << 20, 3);
    let ino = must_create(&a, "f").await;
    must_write(&a, ino, &data).await;
    assert_eq!(b.read(ino, 0, data.len() as u64).await.unwrap(), data); // site-b now holds it
    let fetched = b.stats().remote_fetches;
    // Rot every chunk file at site-b.
    let files = chunk_files(&sites.chunk_dirs[1]);
    assert!(!files.is_empty());
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(f, bytes).unwrap();
    }
    // The read is still correct: the bad copies are refused and refetched from site-a
    // (by a client with a cold block cache: the first one's still holds the good bytes).
    let b = sites.client("site-b").await;
    assert_eq!(b.read(ino, 0, data.len() as u64).await.unwrap(), data);
    let node = b.local().stats().await.unwrap();
    assert_eq!(
        node.corrupt_chunks,
        files.len() as u64,
        "each bad copy detected once"
    );
    assert_eq!(b.stats().remote_fetches, files.len() as u64);
    // Repaired: the next read is local and correct.
    let b = sites.client("site-b").await;
    assert_eq!(b.read(ino, 0, data.len() as u64).await.unwrap(), data);
    assert_eq!(b.stats().remote_fetches, 0);
    assert!(fetched > 0);
}

/// Pages scattered through a file and flushed together are stored in few chunks, packs,
/// each page's extent a range of one; a page zeroed and then written in the same flush is
/// stored once. Both sites read every page back (the other one fetching ranges of the
/// pack), and the namespace checks clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_flushed_together_are_stored_in_packs_and_read_back_at_both_sites() {
    const PAGE: usize = 8192;
    let sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let b = sites.client("site-b").await;
    let ino = must_create(&a, "db").await;
    let mut image = vec![0u8; 600 * PAGE];
    let mut w = a.writer(ino);
    // Extended with a zeroed page first, as a database does, then written.
    w.write(0, &[0u8; PAGE]).await.unwrap();
    for i in 0..200 {
        let page = noise(PAGE, 100 + i as u64);
        w.write((i * 3 * PAGE) as u64, &page).await.unwrap();
        image[i * 3 * PAGE..][..PAGE].copy_from_slice(&page);
    }
    let before = a.stats();
    w.flush().await.unwrap();
    let after = a.stats();
    // 1.6 MiB of pages: two packs of at most 1 MiB.
    assert_eq!(after.chunks_sent - before.chunks_sent, 2, "two stores");
    assert_eq!(
        after.bytes_sent - before.bytes_sent,
        200 * PAGE as u64,
        "the zeroed page is not stored"
    );
    let (extents, size) = a
        .meta()
        .read_slices(ino, 0, image.len() as u64, false)
        .await
        .unwrap();
    assert_eq!(size, (598 * PAGE) as u64);
    let packs: std::collections::HashSet<_> = extents
        .iter()
        .filter_map(|e| e.chunk.as_ref().map(|c| c.hash))
        .collect();
    assert_eq!(packs.len(), 2, "every page a range of one of two chunks");
    assert!(extents
        .iter()
        .any(|e| e.chunk.as_ref().is_some_and(|c| c.offset > 0)));

    let image = &image[..size as usize];
    assert_eq!(a.read(ino, 0, size).await.unwrap(), image);
    // One page alone at the other site, then all of it.
    let page = 77 * 3 * PAGE;
    assert_eq!(
        b.read(ino, page as u64, PAGE as u64).await.unwrap(),
        &image[page..][..PAGE]
    );
    assert_eq!(b.read(ino, 0, size).await.unwrap(), image);
    let report = a.meta().fsck().await.unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
}
