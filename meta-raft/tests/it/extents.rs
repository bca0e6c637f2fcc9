//! Property test: overlaying a record's pieces on a block's merged view by splicing gives
//! exactly what the sort-based merge gives, record after record (the state machine's
//! compaction stores the result, so every member must get the same extents).

use mobilus_proto::fs::{overlay_extents, overlay_extents_by_sorting, ChunkHash, ChunkRef, Extent};
use proptest::prelude::*;

const BLOCK: u64 = 4096;

/// A record: where it starts, and its pieces as (gap before, length, a hole?).
type Record = (u64, Vec<(u64, u64, bool)>);

fn record() -> impl Strategy<Value = Record> {
    (
        0..BLOCK,
        prop::collection::vec((0..3u64, 1..900u64, any::<bool>()), 1..5),
    )
}

/// `len` bytes of chunk `tag`, from offset 1000.
fn chunk(tag: u8, len: u64) -> ChunkRef {
    ChunkRef {
        hash: ChunkHash([tag; 32]),
        offset: 1000,
        len,
    }
}

fn must_agree(records: &[Record], lo: u64, hi: u64) -> Result<(), TestCaseError> {
    let whole = Extent {
        offset: lo,
        len: hi - lo,
        chunk: None,
    };
    let (mut spliced, mut sorted) = (vec![whole.clone()], vec![whole]);
    // Records with gaps between their pieces leave those gaps out of the view.
    let mut gapless = true;
    for (i, (start, parts)) in records.iter().enumerate() {
        // Sorted, apart, none empty, inside [lo, hi): what a record cut to a block is.
        let mut pieces = Vec::new();
        let mut at = *start;
        for (j, &(gap, len, hole)) in parts.iter().enumerate() {
            let (s, e) = ((at + gap).max(lo), (at + gap + len).min(hi));
            if s < e {
                let chunk = (!hole).then(|| chunk((i * 8 + j) as u8, e - s));
                pieces.push(Extent {
                    offset: s,
                    len: e - s,
                    chunk,
                });
            }
            gapless &= gap == 0;
            at += gap + len;
        }
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
            continue;
        };
        let (a, b) = (first.offset, last.offset + last.len);
        overlay_extents(&mut spliced, a, b, pieces.clone());
        overlay_extents_by_sorting(&mut sorted, a, b, pieces);
        prop_assert_eq!(&spliced, &sorted, "after record {}", i);
    }
    if !gapless {
        return Ok(());
    }
    // Still a cover of [lo, hi) in order.
    let mut at = lo;
    for e in &spliced {
        prop_assert_eq!(e.offset, at);
        at += e.len;
    }
    prop_assert_eq!(at, hi);
    Ok(())
}

proptest! {
    #[test]
    fn splicing_pieces_in_agrees_with_merging_by_sort(
        records in prop::collection::vec(record(), 1..60),
        lo in 0..BLOCK / 2,
    ) {
        must_agree(&records, lo, BLOCK)?;
    }

    #[test]
    fn every_byte_reads_as_the_last_piece_laid_over_it(
        lays in prop::collection::vec((0..600u64, 0..120u64, 0..3u64, any::<bool>()), 1..40),
    ) {
        // Pieces as a client lays a write's chunks: one at a time, some of them empty
        // (a zero-length chunk reference), over a cover of [0, 600).
        const END: u64 = 600;
        let mut extents = vec![Extent { offset: 0, len: END, chunk: None }];
        // What each byte reads as: (chunk tag, offset in the chunk), or a hole.
        let mut model: Vec<Option<(u8, u64)>> = vec![None; END as usize];
        for (i, &(at, len, empty, hole)) in lays.iter().enumerate() {
            let len = if empty == 0 { 0 } else { len.min(END - at) };
            let tag = i as u8;
            let piece = Extent { offset: at, len, chunk: (!hole).then(|| chunk(tag, len)) };
            overlay_extents(&mut extents, at, at + len, vec![piece]);
            for k in 0..len {
                model[(at + k) as usize] = (!hole).then_some((tag, 1000 + k));
            }
        }
        let mut got = Vec::new();
        let mut at = 0;
        for e in &extents {
            prop_assert_eq!(e.offset, at, "extents out of order or apart");
            prop_assert!(e.len > 0, "an empty extent: {:?}", e);
            for k in 0..e.len {
                got.push(e.chunk.map(|c| (c.hash.0[0], c.offset + k)));
            }
            at += e.len;
        }
        prop_assert_eq!(got, model);
    }
}
