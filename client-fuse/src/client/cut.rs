//! A flush's buffered writes cut into the chunks it stores and the slices it commits.
//!
//! A run of at least [`chunker::MIN_CHUNK`] is cut by content, as always. Smaller runs
//! (a database's pages, written back at a checkpoint or an fsync, each a run of its own)
//! are packed, in the order buffered, into chunks of at most [`PACK_BYTES`], and
//! each run's slice names its range of its pack (a `ChunkRef` with an offset). One
//! store then carries many pages: each store costs the data node a file, three syncs
//! and an index write, so a checkpoint of 8 KiB pages, one store each, kept it busy for
//! about 0.6 ms of CPU per page. A flush of one small run stores the same chunk as
//! before (a pack of one is the run itself), so small files still deduplicate; pages
//! packed together deduplicate only as a whole. A pack stays stored while any of its
//! ranges is referenced, and a miss at another site brings the whole chunk after the
//! range it needs: so packs are kept to 1 MiB, the average chunk, not the largest.

use std::collections::{BTreeMap, HashMap, HashSet};

use mobilus_proto::fs::{ChunkHash, ChunkRef, SliceWrite};

use crate::chunker::{self, Piece};

/// The most bytes one pack holds.
pub(super) const PACK_BYTES: usize = chunker::AVG_CHUNK;

/// Where a chunk's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bytes {
    /// `len` bytes at `at` of buffered write `entry`.
    Piece { entry: usize, at: usize, len: usize },
    /// Pack `n` of [`Cut::packs`], whole.
    Pack(usize),
}

/// What a flush stores and commits.
#[derive(Debug, Default)]
pub(super) struct Cut {
    /// One per buffered write not left out, in order.
    pub slices: Vec<SliceWrite>,
    /// Each chunk to store once, and where its bytes are.
    pub chunks: Vec<(ChunkHash, Bytes)>,
    /// The packs of small runs.
    pub packs: Vec<Vec<u8>>,
}

impl Cut {
    /// Cut `pending` (offset and bytes of each buffered write); `ahead(entry, bytes)`
    /// gives the pieces of a run already cut and stored ahead, if any (those are kept).
    /// A small run that later runs of the buffer cover whole is left out (a database
    /// extends a file with zeroed pages, then writes them), and small runs alike share
    /// their bytes in the pack.
    pub(super) fn of(
        pending: &[(u64, Vec<u8>)],
        ahead: impl Fn(usize, &[u8]) -> Option<Vec<Piece>>,
    ) -> Self {
        let covered = covered_by_later(pending);
        let mut cut = Cut::default();
        let mut seen = HashSet::new();
        // Packs filled so far (the last one open), and per pack its lone run's hash if it
        // holds one (so a pack of one run is not hashed twice).
        let mut packs: Vec<(Vec<u8>, Option<ChunkHash>)> = Vec::new();
        // Per packed slice: which pack and where in it; per run's bytes, where packed.
        let mut packed: Vec<(usize, usize, u64)> = Vec::new();
        let mut same: HashMap<ChunkHash, (usize, u64)> = HashMap::new();
        for (entry, (offset, buf)) in pending.iter().enumerate() {
            let mut slice = SliceWrite {
                offset: *offset,
                len: buf.len() as u64,
                chunks: Vec::new(),
            };
            let stored_ahead = ahead(entry, buf);
            if stored_ahead.is_none() && buf.len() <= chunker::MIN_CHUNK {
                if covered[entry] {
                    continue;
                }
                let run = ChunkHash::of(buf);
                let at = match same.get(&run) {
                    Some(at) => *at,
                    None => {
                        let fits = packs
                            .last()
                            .is_some_and(|(p, _)| p.len() + buf.len() <= PACK_BYTES);
                        if !fits {
                            packs.push((Vec::new(), Some(run)));
                        } else if let Some(last) = packs.last_mut() {
                            last.1 = None;
                        }
                        let (n, pack) = (packs.len() - 1, &mut packs.last_mut().unwrap().0);
                        let at = (n, pack.len() as u64);
                        pack.extend_from_slice(buf);
                        same.insert(run, at);
                        at
                    }
                };
                packed.push((cut.slices.len(), at.0, at.1));
                cut.slices.push(slice);
                continue;
            }
            let pieces = stored_ahead.unwrap_or_else(|| chunker::chunk(buf));
            slice.chunks = pieces
                .iter()
                .map(|p| ChunkRef {
                    hash: p.hash,
                    offset: 0,
                    len: p.len as u64,
                })
                .collect();
            cut.slices.push(slice);
            for p in pieces {
                if seen.insert(p.hash) {
                    let bytes = Bytes::Piece {
                        entry,
                        at: p.offset,
                        len: p.len,
                    };
                    cut.chunks.push((p.hash, bytes));
                }
            }
        }
        let hashes: Vec<ChunkHash> = packs
            .iter()
            .map(|(bytes, lone)| lone.unwrap_or_else(|| ChunkHash::of(bytes)))
            .collect();
        for (slice, n, at) in packed {
            let s = &mut cut.slices[slice];
            s.chunks = vec![ChunkRef {
                hash: hashes[n],
                offset: at,
                len: s.len,
            }];
        }
        for ((bytes, _), hash) in packs.into_iter().zip(hashes) {
            if seen.insert(hash) {
                cut.chunks.push((hash, Bytes::Pack(cut.packs.len())));
                cut.packs.push(bytes);
            }
        }
        cut
    }

    /// The bytes of a chunk, from `pending` (the writes cut) or a pack.
    pub(super) fn bytes<'a>(&'a self, pending: &'a [(u64, Vec<u8>)], at: Bytes) -> &'a [u8] {
        match at {
            Bytes::Piece { entry, at, len } => &pending[entry].1[at..at + len],
            Bytes::Pack(n) => &self.packs[n],
        }
    }
}

/// Per buffered write, whether the writes after it cover all its bytes.
fn covered_by_later(pending: &[(u64, Vec<u8>)]) -> Vec<bool> {
    // What the later writes cover: disjoint ranges, start to end, merged when they touch.
    let mut later: BTreeMap<u64, u64> = BTreeMap::new();
    let mut covered = vec![false; pending.len()];
    for (i, (offset, buf)) in pending.iter().enumerate().rev() {
        let (a, b) = (*offset, offset + buf.len() as u64);
        let before = later.range(..=a).next_back().map(|(s, e)| (*s, *e));
        if before.is_some_and(|(_, e)| e >= b) {
            covered[i] = true;
            continue;
        }
        let (mut start, mut end) = (a, b);
        if let Some((s, e)) = before.filter(|(_, e)| *e >= a) {
            later.remove(&s);
            (start, end) = (s, end.max(e));
        }
        let inside: Vec<u64> = later.range(a..=end).map(|(s, _)| *s).collect();
        for s in inside {
            if let Some(e) = later.remove(&s) {
                end = end.max(e);
            }
        }
        later.insert(start, end);
    }
    covered
}

#[cfg(test)]
mod tests {
    use super::*;
    use mobilus_proto::noise::noise;

    /// The file the writes make, applied in order onto `size` zero bytes.
    fn image(writes: impl IntoIterator<Item = (u64, Vec<u8>)>, size: usize) -> Vec<u8> {
        let mut file = vec![0u8; size];
        for (at, bytes) in writes {
            file[at as usize..][..bytes.len()].copy_from_slice(&bytes);
        }
        file
    }

    /// The file the slices make, read back from the chunks stored.
    fn replay(cut: &Cut, pending: &[(u64, Vec<u8>)], size: usize) -> Vec<u8> {
        let stored: HashMap<ChunkHash, &[u8]> = cut
            .chunks
            .iter()
            .map(|(h, at)| (*h, cut.bytes(pending, *at)))
            .collect();
        let writes = cut.slices.iter().map(|s| {
            let mut bytes = Vec::new();
            for c in &s.chunks {
                let chunk = stored[&c.hash];
                assert_eq!(
                    ChunkHash::of(chunk),
                    c.hash,
                    "a chunk is named by its bytes"
                );
                bytes.extend_from_slice(&chunk[c.offset as usize..][..c.len as usize]);
            }
            assert_eq!(bytes.len() as u64, s.len);
            (s.offset, bytes)
        });
        image(writes, size)
    }

    #[test]
    fn small_runs_share_packs_and_the_slices_make_the_same_file() {
        const SIZE: usize = 32 << 20;
        // 600 pages of 8 KiB at scattered offsets, a large run among them, the same
        // bytes at two places, and a page overwritten later.
        let mut pending: Vec<(u64, Vec<u8>)> = (0..600u64)
            .map(|i| (i * 3 * 8192, noise(8192, i)))
            .collect();
        pending.insert(300, (20 << 20, noise(3 << 20, 999)));
        pending.push((30 << 20, noise(8192, 7)));
        pending.push((3 * 8192, noise(8192, 5000)));
        let cut = Cut::of(&pending, |_, _| None);
        assert_eq!(replay(&cut, &pending, SIZE), image(pending.clone(), SIZE));
        // The 600 pages but the one overwritten (4.7 MiB) in five packs, the page written
        // twice once; the large run cut by content.
        let packed: usize = cut.packs.iter().map(Vec::len).sum();
        assert_eq!(packed, 600 * 8192);
        assert_eq!(cut.packs.len(), (600 * 8192usize).div_ceil(PACK_BYTES));
        assert!(cut.packs.iter().all(|p| p.len() <= PACK_BYTES));
        let large = chunker::chunk(&pending[300].1).len();
        assert_eq!(cut.chunks.len(), cut.packs.len() + large);
        assert_eq!(
            cut.slices.len(),
            pending.len() - 1,
            "the page overwritten is left out"
        );
    }

    #[test]
    fn writes_covered_by_later_ones_are_left_out_and_only_those() {
        let w = |at: u64, len: usize| (at, vec![1u8; len]);
        // [0,10) covered by [0,4) and [4,12); [20,30) only partly by [25,40).
        let pending = vec![w(0, 10), w(20, 10), w(0, 4), w(4, 8), w(25, 15), w(12, 1)];
        assert_eq!(
            covered_by_later(&pending),
            [true, false, false, false, false, false]
        );
        // Touching ranges merge; a gap does not count as covered.
        let pending = vec![w(0, 10), w(6, 4), w(0, 5)];
        assert_eq!(covered_by_later(&pending), [false, false, false]);
        let pending = vec![w(0, 10), w(5, 10), w(0, 5), w(11, 4)];
        assert_eq!(covered_by_later(&pending), [true, false, false, false]);
        let pending = vec![w(0, 10), w(5, 5), w(0, 5)];
        assert_eq!(covered_by_later(&pending), [true, false, false]);
    }

    #[test]
    fn a_lone_small_run_is_its_own_chunk_and_pieces_stored_ahead_are_kept() {
        let pending = vec![(4096, noise(4096, 1))];
        let cut = Cut::of(&pending, |_, _| None);
        assert_eq!(cut.chunks.len(), 1);
        assert_eq!(cut.chunks[0].0, ChunkHash::of(&pending[0].1));
        assert_eq!(cut.slices[0].chunks[0].offset, 0);

        // A small run whose pieces were stored ahead is not packed: they are stored.
        let pending = vec![(0, noise(8192, 2)), (1 << 20, noise(8192, 3))];
        let ahead = chunker::chunk(&pending[1].1);
        let cut = Cut::of(&pending, |entry, _| (entry == 1).then(|| ahead.clone()));
        assert_eq!(cut.slices[1].chunks[0].hash, ahead[0].hash);
        assert_eq!(
            replay(&cut, &pending, 2 << 20),
            image(pending.clone(), 2 << 20)
        );
        assert_eq!(Cut::of(&[], |_, _| None).chunks.len(), 0);
    }
}
