//! Content-defined chunking.
//!
//! Sizes: at least 512 KiB, about 1 MiB on average, at most 4 MiB. Content-defined
//! boundaries make an insert or a change in the middle of a file re-send only the chunks
//! around it (restic uses 512 KiB / 1 MiB / 8 MiB); a 4 MiB ceiling (JuiceFS's block size)
//! bounds the bytes a remote read fetches for one small read, and keeps every chunk far
//! below the data node's 16 MiB limit. Buffers smaller than the minimum are one chunk.

use mobilus_proto::fs::ChunkHash;

pub const MIN_CHUNK: usize = 512 << 10;
pub const AVG_CHUNK: usize = 1 << 20;
pub const MAX_CHUNK: usize = 4 << 20;

/// A piece of a buffer and its BLAKE3 name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: usize,
    pub len: usize,
    pub hash: ChunkHash,
}

/// Split `data` into content-defined pieces and hash each.
pub fn chunk(data: &[u8]) -> Vec<Piece> {
    if data.len() <= MIN_CHUNK {
        return vec![Piece {
            offset: 0,
            len: data.len(),
            hash: ChunkHash::of(data),
        }];
    }
    fastcdc::v2020::FastCDC::new(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        .map(|c| Piece {
            offset: c.offset,
            len: c.length,
            hash: ChunkHash::of(&data[c.offset..c.offset + c.length]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mobilus_proto::noise::noise;

    #[test]
    fn pieces_tile_the_buffer_within_the_size_bounds() {
        let data = noise(20 << 20, 1);
        let pieces = chunk(&data);
        let mut pos = 0;
        for (i, p) in pieces.iter().enumerate() {
            assert_eq!(p.offset, pos);
            assert!(p.len <= MAX_CHUNK);
            assert!(p.len >= MIN_CHUNK || i == pieces.len() - 1);
            pos += p.len;
        }
        assert_eq!(pos, data.len());
        assert_eq!(chunk(b"tiny").len(), 1);
    }

    /// What upload-ahead (`client::ahead`) relies on: every piece of a prefix but its
    /// last is a piece of the whole, and cutting on from there gives the whole's rest.
    #[test]
    fn a_prefix_settles_every_piece_but_its_last() {
        let data = noise(24 << 20, 3);
        let whole = chunk(&data);
        for prefix in [
            MIN_CHUNK + 1,
            AVG_CHUNK + 12_345,
            3 * MAX_CHUNK,
            9 << 20,
            17 << 20,
        ] {
            let mut pieces = chunk(&data[..prefix]);
            pieces.pop();
            assert_eq!(pieces[..], whole[..pieces.len()], "prefix {prefix}");
            let cut = pieces.last().map_or(0, |p| p.offset + p.len);
            let rest = chunk(&data[cut..]).into_iter().map(|p| Piece {
                offset: p.offset + cut,
                ..p
            });
            pieces.extend(rest);
            assert_eq!(pieces, whole, "prefix {prefix}, cut at {cut}");
        }
    }

    #[test]
    fn a_change_in_the_middle_changes_only_nearby_chunks() {
        let a = noise(16 << 20, 2);
        let mut b = a.clone();
        for byte in &mut b[8 << 20..(8 << 20) + 4096] {
            *byte ^= 0x5a;
        }
        let (pa, pb) = (chunk(&a), chunk(&b));
        let old: std::collections::HashSet<_> = pa.iter().map(|p| p.hash).collect();
        let changed: usize = pb
            .iter()
            .filter(|p| !old.contains(&p.hash))
            .map(|p| p.len)
            .sum();
        assert!(
            changed <= 2 * MAX_CHUNK,
            "{changed} bytes changed for a 4 KiB edit"
        );
    }
}
