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

fn chunks_of(lens: &[u64], tag: u8) -> Vec<ChunkRef> {
    lens.iter()
        .enumerate()
        .map(|(i, &len)| ChunkRef {
            hash: ChunkHash([tag.wrapping_add(i as u8); 32]),
            offset: i as u64 * 7,
            len,
        })
        .collect()
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
                let chunk = (!hole).then(|| chunks_of(&[e - s], (i * 8 + j) as u8)[0]);
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
    fn untidy_pieces_are_merged_as_before(
        extents_at in prop::collection::vec(1..200u64, 1..8),
        a in 0..600u64,
        span in 0..50u64,
        empty in any::<bool>(),
    ) {
        // A cover of [0, n) and pieces the splice does not take (empty, or a >= b).
        let mut cover = Vec::new();
        let mut at = 0;
        for (i, len) in extents_at.iter().enumerate() {
            cover.push(Extent { offset: at, len: *len, chunk: chunks_of(&[*len], i as u8).pop() });
            at += len;
        }
        let b = if empty { a } else { a + span };
        let pieces = vec![Extent { offset: a, len: 0, chunk: None }];
        let (mut x, mut y) = (cover.clone(), cover);
        overlay_extents(&mut x, a, b, pieces.clone());
        overlay_extents_by_sorting(&mut y, a, b, pieces);
        prop_assert_eq!(x, y);
    }
}
