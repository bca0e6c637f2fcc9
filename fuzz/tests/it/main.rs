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
