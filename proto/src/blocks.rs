//! Verified reads of part of a chunk.
//!
//! A chunk is named by the BLAKE3 hash of its bytes, and BLAKE3 is a tree: the hash is
//! computed from the chaining values of aligned subtrees. Cutting a chunk into
//! [`BLOCK`]-byte blocks (each a whole subtree of the tree), the chaining values of the
//! blocks (the chunk's *outboard*, 32 bytes per block) hash to the chunk's name. So a
//! reader that knows only the name can check the outboard against it, then check any
//! block against its own chaining value: a 4 KiB read fetches and hashes one block, not
//! the whole chunk, and a block from an untrusted site is still verified end to end.
//!
//! 16 KiB: a database page (4 or 8 KiB) costs at most one block read and hash, while a
//! 4 MiB chunk's outboard stays 8 KiB (the same group size as the bao-tree crate's).

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use crate::fs::ChunkHash;

/// Bytes per block (a power of two, a multiple of BLAKE3's 1 KiB chunk).
pub const BLOCK: u64 = 16 << 10;
/// Most bytes of blocks one `ReadBlocks` call returns.
pub const MAX_READ_BYTES: u64 = 1 << 20;
/// Bytes of outboard per block.
pub const CV_LEN: usize = 32;

/// Blocks in a chunk of `size` bytes (an empty chunk has one, empty).
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK).max(1)
}

/// The blocks `[first, end)` that cover `[offset, offset+len)` of a chunk (at least one).
pub fn blocks_covering(offset: u64, len: u64) -> (u64, u64) {
    let first = offset / BLOCK;
    let end = offset.saturating_add(len.max(1)).div_ceil(BLOCK);
    (first, end.max(first + 1))
}

/// The byte range of block `index` of a chunk of `size` bytes.
pub fn block_span(size: u64, index: u64) -> (u64, u64) {
    let start = (index * BLOCK).min(size);
    (start, (start + BLOCK).min(size))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboardError {
    #[error("outboard of {got} bytes for a chunk of {size} bytes (want {want})")]
    Length { size: u64, got: usize, want: usize },
    #[error("outboard does not hash to the chunk's name")]
    Mismatch,
}

/// A chunk's block chaining values, known to hash to its name: every constructor checks.
///
/// The chaining values prove the chunk's size only to its last block: the tree's shape
/// depends on the block count, and the last block's length is bound only by its own
/// chaining value. So an outboard received with a claimed size has that size *proven*
/// only once its last block is verified ([`Outboard::size_proven`]); until then a
/// reply may claim another size of the same shape, and every block but the last still
/// verifies as the chunk's own (found by fuzzing: a reply claiming a size a few bytes
/// off was accepted, and the wrong size kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outboard {
    hash: ChunkHash,
    size: u64,
    /// Empty for a chunk of one block: that block is checked against the name itself.
    cvs: Vec<ChainingValue>,
    size_proven: bool,
}

impl Outboard {
    /// Hash `data` block by block: its outboard, whose [`Outboard::hash`] equals
    /// `ChunkHash::of(data)`.
    pub fn compute(data: &[u8]) -> Outboard {
        let size = data.len() as u64;
        if size <= BLOCK {
            return Outboard {
                hash: ChunkHash::of(data),
                size,
                cvs: Vec::new(),
                size_proven: true,
            };
        }
        let cvs: Vec<ChainingValue> = data
            .chunks(BLOCK as usize)
            .enumerate()
            .map(|(i, block)| block_cv(i as u64, block))
            .collect();
        Outboard {
            hash: root_of(&cvs, size),
            size,
            cvs,
            size_proven: true,
        }
    }

    /// The outboard `bytes` (as [`Outboard::to_bytes`] wrote them) of chunk `hash` of
    /// `size` bytes, if they hash to `hash`. A chunk of one block has no outboard: then
    /// nothing, not even `size`, is verified until its block is ([`Outboard::verify_block`]).
    /// `size` itself is verified only to the tree's shape ([`Outboard::size_proven`] is
    /// false): [`Outboard::with_size_proven`] once the last block verifies.
    pub fn verified(hash: ChunkHash, size: u64, bytes: &[u8]) -> Result<Outboard, OutboardError> {
        let want = if block_count(size) == 1 {
            0
        } else {
            block_count(size) as usize * CV_LEN
        };
        if bytes.len() != want {
            return Err(OutboardError::Length {
                size,
                got: bytes.len(),
                want,
            });
        }
        let cvs: Vec<ChainingValue> = bytes
            .chunks_exact(CV_LEN)
            .map(|c| c.try_into().unwrap_or([0; CV_LEN]))
            .collect();
        if !cvs.is_empty() && root_of(&cvs, size) != hash {
            return Err(OutboardError::Mismatch);
        }
        Ok(Outboard {
            hash,
            size,
            cvs,
            size_proven: false,
        })
    }

    /// Whether [`Outboard::size`] is the chunk's true size: computed from the bytes, or
    /// confirmed by its last block.
    pub fn size_proven(&self) -> bool {
        self.size_proven
    }

    /// This outboard with its size proven: `last_block` is the chunk's last block, else
    /// `None`.
    pub fn with_size_proven(&self, last_block: &[u8]) -> Option<Outboard> {
        let last = block_count(self.size) - 1;
        self.verify_block(last, last_block).then(|| Outboard {
            size_proven: true,
            ..self.clone()
        })
    }

    pub fn hash(&self) -> ChunkHash {
        self.hash
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The chaining values, concatenated (empty for a one-block chunk).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.cvs.concat()
    }

    /// Bytes of memory it holds (cache weights).
    pub fn weight(&self) -> u64 {
        (self.cvs.len() * CV_LEN + 64) as u64
    }

    /// Whether `data` is block `index` of the chunk.
    pub fn verify_block(&self, index: u64, data: &[u8]) -> bool {
        let (start, end) = block_span(self.size, index);
        if index >= block_count(self.size) || data.len() as u64 != end - start {
            return false;
        }
        match self.cvs.get(index as usize) {
            Some(cv) => block_cv(index, data) == *cv,
            None => self.cvs.is_empty() && ChunkHash::of(data) == self.hash,
        }
    }
}

/// The chaining value of block `index` (a chunk of more than one block).
fn block_cv(index: u64, block: &[u8]) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(index * BLOCK)
        .update(block)
        .finalize_non_root()
}

/// The chunk hash from its block chaining values (at least two blocks), following
/// BLAKE3's left-balanced tree: the left subtree holds the largest power of two of
/// 1 KiB chunks smaller than the whole, which is a whole number of blocks.
fn root_of(cvs: &[ChainingValue], size: u64) -> ChunkHash {
    let left = left_subtree_len(size);
    let split = (left / BLOCK) as usize;
    let (l, r) = cvs.split_at(split);
    let hash = merge_subtrees_root(
        &subtree_of(l, left),
        &subtree_of(r, size - left),
        Mode::Hash,
    );
    ChunkHash(*hash.as_bytes())
}

fn subtree_of(cvs: &[ChainingValue], len: u64) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_subtree_len(len);
    let (l, r) = cvs.split_at((left / BLOCK) as usize);
    merge_subtrees_non_root(&subtree_of(l, left), &subtree_of(r, len - left), Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::noise;

    #[test]
    fn the_outboard_hashes_to_the_chunk_name_at_every_size() {
        let b = BLOCK as usize;
        for n in [
            0,
            1,
            1024,
            b - 1,
            b,
            b + 1,
            2 * b,
            3 * b + 7,
            5 * b,
            64 * b - 1,
            (4 << 20) + 13,
        ] {
            let data = noise(n, n as u64);
            let ob = Outboard::compute(&data);
            assert_eq!(ob.hash(), ChunkHash::of(&data), "size {n}");
            let again = Outboard::verified(ob.hash(), n as u64, &ob.to_bytes()).unwrap();
            assert!(!again.size_proven() && ob.size_proven());
            let (s, e) = block_span(n as u64, block_count(n as u64) - 1);
            let proven = again.with_size_proven(&data[s as usize..e as usize]);
            assert_eq!(proven.as_ref(), Some(&ob), "size {n}");
            for i in 0..block_count(n as u64) {
                let (s, e) = block_span(n as u64, i);
                assert!(
                    ob.verify_block(i, &data[s as usize..e as usize]),
                    "size {n} block {i}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_bit_or_a_wrong_outboard_is_caught() {
        let data = noise(5 * BLOCK as usize + 100, 1);
        let ob = Outboard::compute(&data);
        let mut block = data[BLOCK as usize..2 * BLOCK as usize].to_vec();
        block[77] ^= 1;
        assert!(!ob.verify_block(1, &block));
        // The right bytes at the wrong index, or cut short.
        assert!(!ob.verify_block(2, &data[BLOCK as usize..2 * BLOCK as usize]));
        assert!(!ob.verify_block(0, &data[..100]));
        assert!(!ob.verify_block(9, &data[..100]));
        let mut bytes = ob.to_bytes();
        bytes[40] ^= 1;
        let size = data.len() as u64;
        assert_eq!(
            Outboard::verified(ob.hash(), size, &bytes),
            Err(OutboardError::Mismatch)
        );
        assert!(matches!(
            Outboard::verified(ob.hash(), size, &bytes[..64]),
            Err(OutboardError::Length { .. })
        ));
        let small = Outboard::compute(b"tiny");
        assert!(small.verify_block(0, b"tiny"));
        assert!(!small.verify_block(0, b"tinY"));
    }

    /// The outboard binds the tree's shape, not the last block's length: a claimed size
    /// of the same shape verifies, but is never proven, and the last block read at it
    /// fails.
    #[test]
    fn an_outboard_proves_its_size_only_with_its_last_block() {
        let b = BLOCK as usize;
        let data = noise(3 * b + 1234, 7);
        let ob = Outboard::compute(&data);
        let last = &data[3 * b..];
        for claimed in [3 * BLOCK + 1, 3 * BLOCK + 1233, 4 * BLOCK] {
            let lie = Outboard::verified(ob.hash(), claimed, &ob.to_bytes()).unwrap();
            assert!(!lie.size_proven());
            assert!(
                lie.verify_block(1, &data[b..2 * b]),
                "a middle block still verifies"
            );
            assert!(!lie.verify_block(3, last));
            assert_eq!(lie.with_size_proven(last), None);
            let (s, e) = block_span(claimed, 3);
            let padded: Vec<u8> = last.iter().copied().chain([0; 1 << 14]).collect();
            assert_eq!(lie.with_size_proven(&padded[..(e - s) as usize]), None);
        }
        // Another shape (a fifth block) does not verify at all.
        assert!(Outboard::verified(ob.hash(), 4 * BLOCK + 1, &ob.to_bytes()).is_err());
        let truth = Outboard::verified(ob.hash(), data.len() as u64, &ob.to_bytes()).unwrap();
        assert_eq!(truth.with_size_proven(last), Some(ob));
    }

    #[test]
    fn covering_blocks() {
        assert_eq!(blocks_covering(0, 4096), (0, 1));
        assert_eq!(blocks_covering(BLOCK - 1, 2), (0, 2));
        assert_eq!(blocks_covering(BLOCK, BLOCK), (1, 2));
        assert_eq!(blocks_covering(5, 0), (0, 1));
        assert_eq!(block_span(BLOCK + 10, 1), (BLOCK, BLOCK + 10));
    }
}
