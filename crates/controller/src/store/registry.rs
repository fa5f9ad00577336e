//! The node registry: every node placed in a pool, the join token it enrols with (once), where
//! its agent listens, and the one certificate it holds.

use std::collections::BTreeSet;

use lockstep_proto::nodes::Pool;
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredNode {
    pub name: String,
    pub pool: Pool,
    pub added_at: String,
    /// `None` until it enrolled.
    pub agent_url: Option<String>,
    /// The certificate it was last issued (`lockstep_transport::fingerprint_of`); no other is
    /// taken from it.
    pub certificate_fingerprint: Option<String>,
    pub certificate_expires_at: Option<String>,
}

impl RegisteredNode {
    pub fn enrolled(&self) -> bool {
        self.certificate_fingerprint.is_some()
    }
}

const COLUMNS: &str =
    "name, pool, added_at, agent_url, certificate_fingerprint, certificate_expires_at";

fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<RegisteredNode> {
    let pool: String = row.get(1)?;
    Ok(RegisteredNode {
        name: row.get(0)?,
        pool: pool.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
        })?,
        added_at: row.get(2)?,
        agent_url: row.get(3)?,
        certificate_fingerprint: row.get(4)?,
        certificate_expires_at: row.get(5)?,
    })
}

impl Store {
    /// Places node `name` in `pool` (kept if it is there already) with a new join token, which
    /// replaces any earlier one.
    pub fn register_node(
        &self,
        name: &str,
        pool: Pool,
        join_secret_hash: &str,
        join_expires_at: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO cluster_nodes (name, pool, added_at, join_secret_hash, join_expires_at)
                 VALUES (?1, ?2, ?5, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET join_secret_hash = ?3, join_expires_at = ?4",
                params![name, pool.as_str(), join_secret_hash, join_expires_at, now],
            )?;
            Ok(())
        })
    }

    /// Every registered node, in the order they were added.
    pub fn registered_nodes(&self) -> Result<Vec<RegisteredNode>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(&format!(
                "SELECT {COLUMNS} FROM cluster_nodes ORDER BY added_at, name"
            ))?;
            let nodes = statement
                .query_map([], read)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(nodes)
        })
    }

    pub fn registered_node(&self, name: &str) -> Result<Option<RegisteredNode>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM cluster_nodes WHERE name = ?1"),
                [name],
                read,
            )
            .optional()?)
        })
    }

    /// The node whose unexpired join token has this secret's hash; the token is spent.
    pub fn take_join(
        &self,
        join_secret_hash: &str,
        now: &str,
    ) -> Result<Option<RegisteredNode>, StoreError> {
        self.with(|c| {
            let node = c
                .query_row(
                    &format!(
                        "UPDATE cluster_nodes SET join_secret_hash = NULL, join_expires_at = NULL
                         WHERE join_secret_hash = ?1 AND join_expires_at > ?2
                         RETURNING {COLUMNS}"
                    ),
                    params![join_secret_hash, now],
                    read,
                )
                .optional()?;
            Ok(node)
        })
    }

    /// The certificate `name` holds from now on, and where its agent listens.
    pub fn record_certificate(
        &self,
        name: &str,
        agent_url: &str,
        fingerprint: &str,
        expires_at: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE cluster_nodes
                 SET agent_url = ?2, certificate_fingerprint = ?3, certificate_expires_at = ?4
                 WHERE name = ?1",
                params![name, agent_url, fingerprint, expires_at],
            )?;
            Ok(())
        })
    }

    /// Removes node `name`; the certificate it holds is revoked until it expires.
    pub fn unregister_node(&self, name: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.lock().expect("store lock");
        let tx = connection.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO revoked_certificates (fingerprint, expires_at)
             SELECT certificate_fingerprint, certificate_expires_at FROM cluster_nodes
             WHERE name = ?1 AND certificate_fingerprint IS NOT NULL",
            [name],
        )?;
        tx.execute("DELETE FROM cluster_nodes WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    /// The revoked certificates that have not expired at `now`; the expired ones are forgotten.
    pub fn revoked_certificates(&self, now: &str) -> Result<BTreeSet<String>, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM revoked_certificates WHERE expires_at <= ?1",
                [now],
            )?;
            let mut statement = c.prepare("SELECT fingerprint FROM revoked_certificates")?;
            let revoked = statement
                .query_map([], |row| row.get(0))?
                .collect::<Result<BTreeSet<String>, _>>()?;
            Ok(revoked)
        })
    }

    /// Adds node `name` at `agent_url` to `environment`, ordered among its nodes as the nodes
    /// were added to the registry (whatever order their hosts joined in).
    pub fn add_environment_node(
        &self,
        environment: &str,
        name: &str,
        agent_url: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO nodes (environment, name, position, agent_url)
                 VALUES (?1, ?2, (SELECT rowid FROM cluster_nodes WHERE name = ?2), ?3)",
                params![environment, name, agent_url],
            )?;
            Ok(())
        })
    }

    pub fn remove_environment_node(&self, environment: &str, name: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM nodes WHERE environment = ?1 AND name = ?2",
                params![environment, name],
            )?;
            Ok(())
        })
    }
}
