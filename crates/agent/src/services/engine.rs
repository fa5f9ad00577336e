//! What differs between the engines: how a data folder is made, how the server starts, how the
//! app's user and database are made, and what a relationship to it looks like. Every script
//! runs in the service's sandbox, where the data folder is `/app` and `/run` is its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lockstep_proto::agent::ServiceKind;
use serde_json::{Value, json};

/// The engine's host programs, by name (from the supervisor's runtimes).
pub(super) type Programs = BTreeMap<String, PathBuf>;

/// The user name inside every sandbox, which MariaDB's root account is tied to.
const SANDBOX_USER: &str = lockstep_supervisor::APP_USER;

pub(super) trait Engine: Sync {
    /// Makes the data folder; does nothing when it is made already.
    fn init_script(&self, programs: &Programs) -> Option<String>;
    /// The server, in the foreground, listening on loopback at `port`.
    fn start_script(&self, programs: &Programs, port: u16) -> String;
    /// Files the server reads, written into the data folder before each start: `(name, text)`.
    fn config_files(
        &self,
        _port: u16,
        _password: &str,
        _persistent: bool,
    ) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Makes the app's user (password in `$SERVICE_PASSWORD`) and database; safe to repeat.
    fn provision_script(&self, programs: &Programs, port: u16) -> Option<String>;
    /// The fields of a relationship that depend on the engine, as Platform.sh gives them.
    fn relationship(&self, password: &str) -> Shape;
    /// What the node's endpoint says to the server first on each connection, and the answer it
    /// must get, for engines whose clients on Platform.sh connect without a password.
    fn endpoint_login(&self, _password: &str) -> Option<(Vec<u8>, &'static [u8])> {
        None
    }
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

/// The database and user Platform.sh gives an app by default.
const DATABASE: &str = "main";

struct Postgresql;

impl Engine for Postgresql {
    fn init_script(&self, programs: &Programs) -> Option<String> {
        Some(format!(
            "test -f /app/pg/PG_VERSION || exec {initdb} -D /app/pg -U postgres --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 --no-instructions",
            initdb = program(programs, "initdb")
        ))
    }

    fn start_script(&self, programs: &Programs, port: u16) -> String {
        // The superuser comes in only through the socket in the sandbox's own /run.
        format!(
            "exec {postgres} -D /app/pg -c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories=/run -c logging_collector=off -c shared_buffers=32MB",
            postgres = program(programs, "postgres")
        )
    }

    fn provision_script(&self, programs: &Programs, port: u16) -> Option<String> {
        Some(format!(
            "{psql} -h /run -p {port} -U postgres -d postgres -v ON_ERROR_STOP=1 -q <<SQL
SELECT 'CREATE ROLE {DATABASE} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DATABASE}')\\gexec
ALTER ROLE {DATABASE} PASSWORD '$SERVICE_PASSWORD';
SELECT 'CREATE DATABASE {DATABASE} OWNER {DATABASE}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec
SQL",
            psql = program(programs, "psql")
        ))
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

/// The user Platform.sh gives an app on MariaDB.
const MARIADB_USER: &str = "user";

impl Engine for Mariadb {
    fn init_script(&self, programs: &Programs) -> Option<String> {
        // The administrator is the sandbox's user through the socket, and nobody over the
        // network.
        Some(format!(
            "test -d /app/mysql/mysql || {install} --no-defaults --datadir=/app/mysql --auth-root-authentication-method=socket --auth-root-socket-user={SANDBOX_USER} --skip-test-db >/dev/null",
            install = program(programs, "mariadb-install-db")
        ))
    }

    fn start_script(&self, programs: &Programs, port: u16) -> String {
        format!(
            "exec {mariadbd} --no-defaults --datadir=/app/mysql --socket=/run/mysqld.sock --port={port} --bind-address=127.0.0.1 --pid-file=/run/mariadbd.pid --skip-name-resolve --tmpdir=/tmp --innodb-buffer-pool-size=64M --innodb-log-file-size=16M",
            mariadbd = program(programs, "mariadbd")
        )
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
    fn init_script(&self, _programs: &Programs) -> Option<String> {
        None
    }

    fn start_script(&self, programs: &Programs, _port: u16) -> String {
        format!(
            "exec {server} /app/redis.conf",
            server = program(programs, "redis-server")
        )
    }

    fn config_files(
        &self,
        port: u16,
        password: &str,
        persistent: bool,
    ) -> Vec<(&'static str, String)> {
        let (appendonly, save) = if persistent {
            ("yes", "3600 1 300 100 60 10000")
        } else {
            ("no", "")
        };
        // In a file, not on the command line, where any local user could read the password.
        vec![(
            "redis.conf",
            format!(
                "bind 127.0.0.1\nport {port}\nprotected-mode yes\ndir /app\ndaemonize no\nlogfile \"\"\nrequirepass {password}\nmasterauth {password}\nappendonly {appendonly}\nsave \"{save}\"\n"
            ),
        )]
    }

    fn provision_script(&self, _programs: &Programs, _port: u16) -> Option<String> {
        None
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
