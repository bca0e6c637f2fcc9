//! The fuzz targets under plain `cargo test`: their seeds, and every input that once
//! crashed one (`fuzz/regressions/TARGET/`), replayed.

use std::path::{Path, PathBuf};

use mobilus_fuzz::{seeds, TARGETS};
use mobilus_meta::types::OpReply;

fn regressions(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target)
}

#[test]
fn every_target_has_seeds_and_takes_them() {
    for (name, target) in TARGETS {
        let inputs = seeds::inputs(name);
        assert!(!inputs.is_empty(), "{name} has no seed");
        for input in inputs {
            target(&input);
        }
    }
}

#[test]
fn every_input_that_once_crashed_a_target_is_handled() {
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let Ok(dir) = std::fs::read_dir(regressions(name)) else {
            continue;
        };
        for file in dir {
            let path = file.unwrap().path();
            target(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} regression inputs");
}

/// The seeds reach deep: the scenario's commands are mostly applied (a seed of refused
/// commands would leave the fuzzer exploring refusals).
#[test]
fn the_scenario_applies_its_commands() {
    let (ns, cmds) = seeds::scenario();
    let applied = cmds.len();
    assert!(applied >= 20, "{applied} commands");
    let subtrees = ns.subtrees().unwrap();
    // The shared root, the database's subtree (moved to site-b) and its clone.
    assert_eq!(subtrees.len(), 3, "{subtrees:?}");
    assert!(
        subtrees
            .iter()
            .any(|s| s.owner.as_deref() == Some("site-b")),
        "{subtrees:?}"
    );
    let file = ns.lookup(2, b"table").unwrap();
    assert_eq!(file.size, 8000);
    // Replaying the commands on a new namespace gives the same answers: the scenario is
    // deterministic, so a crash it leads to reproduces.
    let again = mobilus_meta::namespace::Namespace::in_memory().unwrap();
    let replies: Vec<bool> = cmds
        .iter()
        .map(|c| matches!(again.execute(c).unwrap(), Ok(OpReply::Attr(_))))
        .collect();
    assert!(replies.iter().filter(|ok| **ok).count() >= 5);
}

/// The oracles can fail: a block reply with one byte flipped is refused, and the seed's
/// true reply is accepted (else the target would check nothing).
#[test]
fn block_reply_oracle_accepts_the_truth_and_refuses_a_flip() {
    use mobilus_proto::blocks::{block_span, Outboard};
    use mobilus_proto::datapb::ReadBlocksReply;
    use mobilus_proto::fs::ChunkHash;
    let chunk = mobilus_fuzz::wire::true_chunk();
    let (a, b) = block_span(chunk.len() as u64, 2);
    let reply = |data: Vec<u8>| ReadBlocksReply {
        chunk_size: chunk.len() as u64,
        first_block: 2,
        data: data.into(),
        outboard: Outboard::compute(chunk).to_bytes(),
    };
    let hash = ChunkHash::of(chunk);
    let truth = chunk[a as usize..b as usize].to_vec();
    assert!(mobilus_client::read::verify_run(hash, None, 2, reply(truth.clone())).is_ok());
    let mut flipped = truth;
    flipped[100] ^= 1;
    assert!(mobilus_client::read::verify_run(hash, None, 2, reply(flipped)).is_err());
}

/// Found by the fuzzer: an outboard binds a chunk's block count, not its last block's
/// length, so a reply claiming a size a few bytes off verified and the mount kept that
/// size. A claimed size is now proven only by the last block, and corrected by it.
#[test]
fn a_claimed_chunk_size_is_proven_only_by_the_last_block() {
    use mobilus_client::read::verify_run;
    use mobilus_proto::blocks::{block_span, Outboard};
    use mobilus_proto::datapb::ReadBlocksReply;
    use mobilus_proto::fs::ChunkHash;
    use prost::Message;
    let chunk = mobilus_fuzz::wire::true_chunk();
    let len = chunk.len() as u64;
    let hash = ChunkHash::of(chunk);
    let outboard = Outboard::compute(chunk).to_bytes();
    let reply = |size: u64, first: u64, end: u64| {
        let (a, _) = block_span(len, first);
        let (_, b) = block_span(len, end - 1);
        ReadBlocksReply {
            chunk_size: size,
            first_block: first,
            data: chunk[a as usize..b as usize].to_vec().into(),
            outboard: outboard.clone(),
        }
    };
    // A liar: block 1 (true) with a size 10 bytes short. The block is taken, the size
    // is not proven.
    let (lie, run) = verify_run(hash, None, 1, reply(len - 10, 1, 2)).unwrap();
    assert_eq!((lie.size(), lie.size_proven()), (len - 10, false));
    assert_eq!(run.blocks.len(), 1);
    // The last block at the claimed size never verifies...
    let mut short = reply(len - 10, 3, 4);
    short.data.truncate(short.data.len() - 10);
    assert!(verify_run(hash, Some(lie.clone()), 3, short).is_err());
    // ...and an honest node's last block corrects the size and proves it.
    let (truth, _) = verify_run(hash, Some(lie.clone()), 3, reply(len, 3, 4)).unwrap();
    assert_eq!((truth.size(), truth.size_proven()), (len, true));
    // A proven size is not changed by a later claim.
    assert!(verify_run(hash, Some(truth), 1, reply(len - 10, 1, 2)).is_err());
    // The fuzzer's kind of input (the seed with a bit of the size flipped) passes the
    // oracle, which before the fix failed on it.
    let flipped = reply(len ^ 2, 1, 2);
    mobilus_fuzz::wire::block_replies(&[[1u8].as_slice(), &flipped.encode_to_vec()].concat());
}
