//! openraft's storage conformance suite on our RocksDB log and state-machine stores.

use mobilus_meta::store::{self, LogStore, StateMachine};
use mobilus_meta::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, sm) = store::open(dir.path()).expect("open stores");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_conformance_suite_passes() {
    Suite::test_all(RocksBuilder).expect("conformance suite");
}

/// Stores reopened from disk return what was written (the suite only uses fresh stores).
#[tokio::test]
async fn stores_reopen_with_vote_log_and_applied_state() {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::testing::{blank_ent, log_id, membership_ent};
    use openraft::{RaftLogReader, Vote};
    use std::collections::BTreeSet;

    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = store::open(dir.path()).unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        let entries = vec![
            blank_ent::<TypeConfig>(1, 1, 1),
            membership_ent::<TypeConfig>(1, 1, 2, vec![BTreeSet::from([1, 2, 3])]),
        ];
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries.clone())
            .await
            .unwrap();
        sm.apply(entries).await.unwrap();
    }
    let (mut log, mut sm) = store::open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(log.try_get_log_entries(0..10).await.unwrap().len(), 2);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 2)));
    assert_eq!(
        membership.voter_ids().collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 3])
    );
}
