//! Where a site keeps each chunk: rendezvous (highest-random-weight) hashing.
//!
//! Every node of a site gets a score per chunk, a hash of the chunk's name and the node's
//! address; the chunk's *placement* is the site's nodes in descending score, and its
//! copies belong on the first [`replicas`] of them. The order depends only on the chunk
//! and the set of nodes, so every writer, reader and replicator computes the same one
//! without asking anybody, and a node joining or leaving changes the placement of only
//! the chunks it enters or leaves (about R/N of them), unlike `hash mod N`.

use mobilus_proto::fs::ChunkHash;

/// Copies a site keeps of each chunk when it has that many nodes.
pub const DEFAULT_REPLICAS: usize = 2;

/// How many copies a site of `nodes` data nodes keeps of each chunk.
pub fn replicas(nodes: usize) -> usize {
    DEFAULT_REPLICAS.min(nodes)
}

/// A node's weight for a chunk: the higher, the earlier in the chunk's placement.
pub fn score(hash: &ChunkHash, node: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&hash.0);
    h.update(node.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// `nodes` in the order `hash` prefers them (ties, which need equal addresses, by
/// address).
pub fn rank<'a, T>(hash: &ChunkHash, nodes: &'a [T], addr: impl Fn(&T) -> &str) -> Vec<&'a T> {
    let mut ranked: Vec<(u64, &T)> = nodes.iter().map(|n| (score(hash, addr(n)), n)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| addr(a.1).cmp(addr(b.1))));
    ranked.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u32) -> ChunkHash {
        ChunkHash::of(&i.to_le_bytes())
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:7200")).collect()
    }

    fn first_two(h: &ChunkHash, nodes: &[String]) -> Vec<String> {
        rank(h, nodes, |s| s).into_iter().take(2).cloned().collect()
    }

    #[test]
    fn spreads_chunks_evenly_over_nodes() {
        let nodes = nodes(4);
        let mut firsts = std::collections::HashMap::new();
        for i in 0..4000 {
            *firsts
                .entry(rank(&hash(i), &nodes, |s| s)[0].clone())
                .or_insert(0) += 1;
        }
        for n in &nodes {
            let share = firsts[n];
            assert!(
                (800..1200).contains(&share),
                "{n} is first for {share} of 4000"
            );
        }
    }

    #[test]
    fn a_node_joining_moves_few_chunks() {
        let (before, after) = (nodes(4), nodes(5));
        let moved = (0..4000)
            .filter(|i| {
                let h = hash(*i);
                first_two(&h, &before)
                    .iter()
                    .any(|n| !first_two(&h, &after).contains(n))
            })
            .count();
        // A fifth node takes 2/5 of the placements' slots: about 40% of chunks lose one
        // of their two nodes to it; `hash mod N` would move about 80%.
        assert!((1200..2000).contains(&moved), "{moved} of 4000 moved");
    }

    #[test]
    fn the_order_is_the_same_whatever_order_nodes_are_listed_in() {
        let nodes = nodes(5);
        let mut reversed = nodes.clone();
        reversed.reverse();
        for i in 0..100 {
            assert_eq!(
                rank(&hash(i), &nodes, |s| s),
                rank(&hash(i), &reversed, |s| s)
            );
        }
    }

    #[test]
    fn replicas_are_two_or_as_many_nodes_as_there_are() {
        assert_eq!(
            (replicas(0), replicas(1), replicas(2), replicas(5)),
            (0, 1, 2, 2)
        );
    }
}
