//! Where environments' `source: storage` mounts live (SPEC section 11): one folder per pool,
//! shared by every node of the pool. On hosts of their own the operator mounts it (NFS or
//! similar) at the same path on each node of the pool and on the controller's host, which copies
//! environments' files in it (branches, backups, syncs); `lockstep up` on one machine uses one
//! local folder for every pool. It never creates a folder the operator named: a missing mount
//! must fail loudly rather than keep files on one host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lockstep_proto::nodes::Pool;

use crate::{ControllerError, Environment, nodes::pool_of};

pub struct SharedStorage {
    /// The controller's own folder, for every pool the operator named none for.
    local: PathBuf,
    named: BTreeMap<Pool, PathBuf>,
}

impl SharedStorage {
    /// `named`: the operator's folder of each pool that has one; each must be a folder already.
    pub(crate) fn open(
        local: PathBuf,
        named: &BTreeMap<Pool, PathBuf>,
    ) -> Result<SharedStorage, ControllerError> {
        for (pool, folder) in named {
            if *pool == Pool::Edge {
                return Err(ControllerError::Node(
                    "edges keep no environment's files: name shared storage for production, staging or development".into(),
                ));
            }
            if !folder.is_absolute() || !folder.is_dir() {
                return Err(ControllerError::Node(format!(
                    "the {pool} pool's shared storage {} is not a folder on this host: mount the pool's shared folder there (NFS or similar) on the controller's host and on each {pool} node, or leave out `--shared-storage {pool}=`",
                    folder.display()
                )));
            }
        }
        std::fs::create_dir_all(&local)
            .map_err(ControllerError::io(format!("create {}", local.display())))?;
        Ok(SharedStorage {
            local,
            named: named.clone(),
        })
    }

    /// The folder that `pool`'s nodes share.
    pub(crate) fn root(&self, pool: Pool) -> &Path {
        self.named.get(&pool).unwrap_or(&self.local)
    }

    /// `env`'s folder in its pool's shared folder: its apps' `storage` mounts.
    pub(crate) fn of(&self, env: &Environment) -> PathBuf {
        self.root(pool_of(env.kind)).join(&env.name)
    }

    /// The folder the operator named for `pool`, if any.
    pub(crate) fn named(&self, pool: Pool) -> Option<&Path> {
        self.named.get(&pool).map(PathBuf::as_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_folder_must_exist_and_serves_its_pool_alone() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("local");
        let missing = BTreeMap::from([(Pool::Production, dir.path().join("nfs"))]);
        let refused = SharedStorage::open(local.clone(), &missing).err().unwrap();
        assert!(
            refused.to_string().contains("--shared-storage production="),
            "{refused}"
        );
        assert!(
            !dir.path().join("nfs").exists(),
            "a named folder is never made"
        );

        std::fs::create_dir(dir.path().join("nfs")).unwrap();
        let storage = SharedStorage::open(local.clone(), &missing).unwrap();
        assert_eq!(storage.root(Pool::Production), dir.path().join("nfs"));
        assert_eq!(storage.root(Pool::Development), local);
        assert!(local.is_dir());

        let edge = BTreeMap::from([(Pool::Edge, dir.path().join("nfs"))]);
        assert!(SharedStorage::open(local, &edge).is_err());
    }
}
