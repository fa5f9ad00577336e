//! What differs between the engines: how a data folder is made (a replica's as a copy of the
//! primary's), how the server starts, how the app's user and database are made, and what a
//! relationship to it looks like. Every script runs in the service's sandbox, where the data
//! folder is `/app` and `/run` is its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lockstep_proto::agent::{ServiceKind, ServiceRole};
use serde_json::{Value, json};

/// The engine's host programs, by name (from the supervisor's runtimes).
pub(super) type Programs = BTreeMap<String, PathBuf>;

/// The user name inside every sandbox, which MariaDB's administrator account is tied to.
const SANDBOX_USER: &str = lockstep_supervisor::APP_USER;

/// The database and user Platform.sh gives an app by default.
const DATABASE: &str = "main";

pub(super) trait Engine: Sync {
    /// Makes the data folder (a replica's as a copy of the primary's, with the password in
    /// `$SERVICE_PASSWORD`); does nothing when it is made already.
    fn init_script(&self, programs: &Programs, role: &ServiceRole) -> Option<String>;
    /// The server, in the foreground, listening on loopback at `port`.
    fn start_script(&self, programs: &Programs, port: u16, role: &ServiceRole) -> String;
    /// Whether the engine forms a cluster of its own when it has replicas (Galera), and so
    /// needs [`Server::cluster_ports`].
    fn clusters(&self) -> bool {
        false
    }
    /// Files the server reads, written into the data folder before each start: `(name, text)`.
    fn config_files(&self, _server: &Server<'_>) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// On a primary: makes the app's user (password in `$SERVICE_PASSWORD`), its database,
    /// and the user replicas connect as; safe to repeat.
    fn provision_script(&self, programs: &Programs, port: u16) -> Option<String>;
    /// On a replica: prints how it follows its primary, as `STATE [LAG_BYTES]` on one line
    /// (the password in `$SERVICE_PASSWORD`).
    fn replication_script(&self, programs: &Programs, port: u16) -> String;
    /// The fields of a relationship that depend on the engine, as Platform.sh gives them.
    fn relationship(&self, password: &str) -> Shape;
    /// What the node's endpoint says to the server first on each connection, and the answer it
    /// must get, for engines whose clients on Platform.sh connect without a password.
    fn endpoint_login(&self, _password: &str) -> Option<(Vec<u8>, &'static [u8])> {
        None
    }
}

/// What a config file is written for.
pub(super) struct Server<'a> {
    /// The service's name, which names its cluster too.
    pub name: &'a str,
    pub port: u16,
    /// A clustered engine's own ports: for its members, for incremental and for full state
    /// transfers.
    pub cluster_ports: &'a [u16],
    pub password: &'a str,
    pub persistent: bool,
    pub role: &'a ServiceRole,
}

/// The engine's part of a relationship.
pub struct Shape {
    pub scheme: &'static str,
    pub rel: &'static str,
    pub username: Value,
    pub password: Value,
    pub path: Value,
    pub query: Value,
}

pub(super) fn engine(kind: ServiceKind) -> &'static dyn Engine {
    match kind {
        ServiceKind::Postgresql => &Postgresql,
        ServiceKind::Mariadb => &Mariadb,
        ServiceKind::Redis => &Redis,
    }
}

fn program<'a>(programs: &'a Programs, name: &'a str) -> std::borrow::Cow<'a, str> {
    programs
        .get(name)
        .map_or(std::borrow::Cow::Borrowed(name), |path| {
            path.to_string_lossy()
        })
}

/// `host:port` of a primary, split; `default_port` when it names none.
fn host_and_port<'a>(primary: &'a str, default_port: &'a str) -> (&'a str, &'a str) {
    primary.rsplit_once(':').unwrap_or((primary, default_port))
}

struct Postgresql;

/// The role replicas connect as, with the service's password.
const REPLICATION_USER: &str = "replicator";

impl Engine for Postgresql {
    fn init_script(&self, programs: &Programs, role: &ServiceRole) -> Option<String> {
        Some(match role {
            ServiceRole::Replica { primary, .. } => {
                let (host, port) = host_and_port(primary, "5432");
                // `-R` makes the copy a standby of the primary it was copied from.
                format!(
                    "test -f /app/pg/PG_VERSION || PGPASSWORD=\"$SERVICE_PASSWORD\" exec {basebackup} -h {host} -p {port} -U {REPLICATION_USER} -D /app/pg -R -X stream -c fast",
                    basebackup = program(programs, "pg_basebackup")
                )
            }
            _ => format!(
                "test -f /app/pg/PG_VERSION || exec {initdb} -D /app/pg -U postgres --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 --no-instructions",
                initdb = program(programs, "initdb")
            ),
        })
    }

    fn start_script(&self, programs: &Programs, port: u16, role: &ServiceRole) -> String {
        // With replicas, a commit is confirmed once one of them has it too, so that it
        // survives the loss of the primary's node.
        let synchronous = match role {
            ServiceRole::Primary { replicas, .. } if *replicas > 0 => {
                " -c 'synchronous_standby_names=ANY 1 (*)'"
            }
            _ => "",
        };
        // The superuser comes in only through the socket in the sandbox's own /run.
        format!(
            "exec {postgres} -D /app/pg -c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories=/run -c logging_collector=off -c shared_buffers=32MB -c wal_keep_size=256MB{synchronous}",
            postgres = program(programs, "postgres")
        )
    }

    fn provision_script(&self, programs: &Programs, port: u16) -> Option<String> {
        // These commits need no replica: a replica is a copy of the primary made after them.
        Some(format!(
            "{psql} -h /run -p {port} -U postgres -d postgres -v ON_ERROR_STOP=1 -q <<SQL
SET synchronous_commit TO local;
SELECT 'CREATE ROLE {DATABASE} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DATABASE}')\\gexec
ALTER ROLE {DATABASE} PASSWORD '$SERVICE_PASSWORD';
SELECT 'CREATE DATABASE {DATABASE} OWNER {DATABASE}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec
SELECT 'CREATE ROLE {REPLICATION_USER} REPLICATION LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATION_USER}')\\gexec
ALTER ROLE {REPLICATION_USER} PASSWORD '$SERVICE_PASSWORD';
SQL",
            psql = program(programs, "psql")
        ))
    }

    fn replication_script(&self, programs: &Programs, port: u16) -> String {
        format!(
            "{psql} -h /run -p {port} -U postgres -d postgres -tA -F ' ' -c \"SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'stopped'), coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint\"",
            psql = program(programs, "psql")
        )
    }

    fn relationship(&self, password: &str) -> Shape {
        Shape {
            scheme: "pgsql",
            rel: "postgresql",
            username: json!(DATABASE),
            password: json!(password),
            path: json!(DATABASE),
            query: json!({"is_master": true}),
        }
    }
}

struct Mariadb;

/// Galera's library, from Debian's `galera-4`.
const GALERA: &str = "/usr/lib/galera/libgalera_smm.so";

/// The user Platform.sh gives an app on MariaDB.
const MARIADB_USER: &str = "user";

impl Engine for Mariadb {
    fn init_script(&self, programs: &Programs, _role: &ServiceRole) -> Option<String> {
        // The administrator is the sandbox's user through the socket, and nobody over the
        // network.
        Some(format!(
            "test -d /app/mysql/mysql || {install} --no-defaults --datadir=/app/mysql --auth-root-authentication-method=socket --auth-root-socket-user={SANDBOX_USER} --skip-test-db >/dev/null",
            install = program(programs, "mariadb-install-db")
        ))
    }

    fn start_script(&self, programs: &Programs, _port: u16, role: &ServiceRole) -> String {
        // A new cluster starts on its primary; a cluster that was stopped whole starts again
        // on the member Galera marked safe to start it, the last one to leave. Every other
        // member joins, retried until a member is there (after a crash of every member,
        // Galera's `pc.recovery` forms the cluster again once they are all back).
        let first = matches!(role, ServiceRole::Primary { .. });
        format!(
            "bootstrap=\nif {{ [ {first} = true ] && [ ! -f /app/mysql/grastate.dat ]; }} || grep -q '^safe_to_bootstrap: 1' /app/mysql/grastate.dat 2>/dev/null; then bootstrap=--wsrep-new-cluster; fi\nexec {mariadbd} --defaults-file=/app/lockstep.cnf $bootstrap",
            mariadbd = program(programs, "mariadbd")
        )
    }

    fn clusters(&self) -> bool {
        true
    }

    fn config_files(&self, server: &Server<'_>) -> Vec<(&'static str, String)> {
        let mut config = format!(
            "[mysqld]\ndatadir=/app/mysql\nsocket=/run/mysqld.sock\nport={port}\nbind-address=127.0.0.1\npid-file=/run/mariadbd.pid\nskip-name-resolve\ntmpdir=/tmp\ninnodb-buffer-pool-size=64M\ninnodb-log-file-size=16M\n",
            port = server.port
        );
        let members = match server.role {
            ServiceRole::Primary { replicas, cluster } if *replicas > 0 => Some(cluster.clone()),
            ServiceRole::Replica {
                primary: _,
                cluster,
            } => Some(cluster.clone()),
            _ => None,
        };
        if let (Some(members), [member, ist, sst]) = (members, server.cluster_ports) {
            let own = format!("127.0.0.1:{member}");
            let others: Vec<String> = members.into_iter().filter(|m| *m != own).collect();
            config.push_str(&format!(
                "binlog-format=ROW\ninnodb-autoinc-lock-mode=2\nwsrep-on=ON\nwsrep-provider={GALERA}\nwsrep-cluster-name={name}\nwsrep-node-name={member}\nwsrep-node-address=127.0.0.1\nwsrep-provider-options=\"gmcast.listen_addr=tcp://127.0.0.1:{member};ist.recv_addr=127.0.0.1:{ist};pc.recovery=TRUE\"\nwsrep-sst-method=rsync\nwsrep-sst-receive-address=127.0.0.1:{sst}\nwsrep-cluster-address=gcomm://{others}\n",
                name = server.name,
                others = others.join(","),
            ));
        }
        vec![("lockstep.cnf", config)]
    }

    fn provision_script(&self, programs: &Programs, _port: u16) -> Option<String> {
        Some(format!(
            "{mariadb} --no-defaults -S /run/mysqld.sock -u {SANDBOX_USER} <<SQL
CREATE DATABASE IF NOT EXISTS {DATABASE};
CREATE USER IF NOT EXISTS '{MARIADB_USER}'@'%' IDENTIFIED BY '$SERVICE_PASSWORD';
ALTER USER '{MARIADB_USER}'@'%' IDENTIFIED BY '$SERVICE_PASSWORD';
GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{MARIADB_USER}'@'%';
SQL",
            mariadb = program(programs, "mariadb")
        ))
    }

    fn replication_script(&self, programs: &Programs, _port: u16) -> String {
        format!(
            "{mariadb} --no-defaults -S /run/mysqld.sock -u {SANDBOX_USER} -N -e \"SHOW STATUS LIKE 'wsrep_local_state_comment'\" | awk '{{print $2}}'",
            mariadb = program(programs, "mariadb")
        )
    }

    fn relationship(&self, password: &str) -> Shape {
        Shape {
            scheme: "mysql",
            rel: "mysql",
            username: json!(MARIADB_USER),
            password: json!(password),
            path: json!(DATABASE),
            query: json!({"is_master": true}),
        }
    }
}

struct Redis;

impl Engine for Redis {
    fn init_script(&self, _programs: &Programs, _role: &ServiceRole) -> Option<String> {
        None
    }

    fn start_script(&self, programs: &Programs, _port: u16, _role: &ServiceRole) -> String {
        format!(
            "exec {server} /app/redis.conf",
            server = program(programs, "redis-server")
        )
    }

    fn config_files(&self, server: &Server<'_>) -> Vec<(&'static str, String)> {
        let Server {
            port,
            password,
            persistent,
            role,
            ..
        } = server;
        let (appendonly, save) = if *persistent {
            ("yes", "3600 1 300 100 60 10000")
        } else {
            ("no", "")
        };
        let follow = match role {
            ServiceRole::Replica { primary, .. } => {
                let (host, port) = host_and_port(primary, "6379");
                format!("replicaof {host} {port}\n")
            }
            _ => String::new(),
        };
        // In a file, not on the command line, where any local user could read the password.
        vec![(
            "redis.conf",
            format!(
                "bind 127.0.0.1\nport {port}\nprotected-mode yes\ndir /app\ndaemonize no\nlogfile \"\"\nrequirepass {password}\nmasterauth {password}\nappendonly {appendonly}\nsave \"{save}\"\n{follow}"
            ),
        )]
    }

    fn provision_script(&self, _programs: &Programs, _port: u16) -> Option<String> {
        None
    }

    fn replication_script(&self, programs: &Programs, port: u16) -> String {
        format!(
            "REDISCLI_AUTH=\"$SERVICE_PASSWORD\" {cli} -p {port} INFO replication | tr -d '\\r' | awk -F: '/^master_link_status:/ {{print $2}}'",
            cli = program(programs, "redis-cli")
        )
    }

    fn relationship(&self, _password: &str) -> Shape {
        // Platform.sh's Redis takes no password: the node's endpoint gives it.
        Shape {
            scheme: "redis",
            rel: "redis",
            username: Value::Null,
            password: Value::Null,
            path: Value::Null,
            query: json!({}),
        }
    }

    fn endpoint_login(&self, password: &str) -> Option<(Vec<u8>, &'static [u8])> {
        Some((format!("AUTH {password}\r\n").into_bytes(), b"+OK\r\n"))
    }
}
