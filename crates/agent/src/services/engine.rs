//! What differs between the engines: how a data folder is made (a replica's as a copy of the
//! primary's), how the server starts, how the app's user and database are made, and what a
//! relationship to it looks like. Every script runs in the service's sandbox, where the data
//! folder is `/app` and `/run` is its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lockstep_proto::agent::{Privilege, ServiceEndpoints, ServiceKind, ServiceRole};
use serde_json::{Value, json};

/// The engine's host programs, by name (from the supervisor's runtimes).
pub(super) type Programs = BTreeMap<String, PathBuf>;

/// The user name inside every sandbox, which MariaDB's administrator account is tied to.
const SANDBOX_USER: &str = lockstep_supervisor::APP_USER;

pub(super) trait Engine: Sync {
    /// Makes the data folder (a replica's as a copy of the primary's, with the password in
    /// `$SERVICE_PASSWORD`); does nothing when it is made already.
    fn init_script(&self, programs: &Programs, role: &ServiceRole) -> Option<String>;
    /// The server, in the foreground, listening on loopback at `port`.
    fn start_script(&self, programs: &Programs, server: &Server<'_>) -> String;
    /// Whether the engine forms a cluster of its own when it has replicas (Galera), and so
    /// needs [`Server::cluster_ports`].
    fn clusters(&self) -> bool {
        false
    }
    /// Files the server reads, written into the data folder before each start: `(name, text)`.
    fn config_files(&self, _server: &Server<'_>) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// On a primary, once it listens: takes the primary's part (a replica promoted in place
    /// stops following, and a PostgreSQL primary with `replicas` waits for one of them on each
    /// commit), then makes the databases, a user per endpoint with its privileges (the password
    /// of the `i`th endpoint in `$ENDPOINT_PASSWORD_i`), and the user replicas connect as
    /// (password in `$SERVICE_PASSWORD`); safe to repeat.
    fn provision_script(
        &self,
        programs: &Programs,
        port: u16,
        replicas: u32,
        endpoints: &ServiceEndpoints,
    ) -> Option<String>;
    /// On a replica: prints how it follows its primary, as `STATE LAG_BYTES RECEIVED` on one
    /// line, `-` for what the engine does not count (the password in `$SERVICE_PASSWORD`).
    fn replication_script(&self, programs: &Programs, port: u16) -> String;
    /// On a primary: writes a consistent snapshot of every database to its standard output
    /// (anything it says to its standard error) without blocking the server's writers
    /// (PostgreSQL's base backup, MariaDB's backup, Redis's RDB).
    fn snapshot_script(&self, programs: &Programs, port: u16) -> String;
    /// While the server may run: unpacks the snapshot on its standard input beside the data
    /// folder, ready for [`Engine::swap_script`].
    fn unpack_script(&self, programs: &Programs) -> String;
    /// With the server stopped: puts the unpacked snapshot in place of the data folder. Its
    /// users' passwords are the snapshot's until the next provisioning sets this service's.
    fn swap_script(&self) -> &'static str;
    /// With the server stopped: removes the data, so that the next start makes it again (a
    /// replica's as a copy of its primary's); its config files stay.
    fn discard_script(&self) -> &'static str;
    /// The fields of a relationship that depend on the engine, as Platform.sh gives them.
    fn relationship(&self) -> Shape;
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
    /// The node's own address, where the other nodes' replicas, cluster members and
    /// endpoints reach the server; it listens on loopback too, for this node's endpoints.
    pub address: std::net::IpAddr,
}

impl Server<'_> {
    /// Every address the server listens on, separated by `separator`.
    fn listen(&self, separator: &str) -> String {
        if self.address.is_loopback() {
            "127.0.0.1".into()
        } else {
            format!("127.0.0.1{separator}{}", self.address)
        }
    }
}

/// The engine's part of a relationship.
pub struct Shape {
    pub scheme: &'static str,
    /// Whether apps log in with an endpoint's user and password (not Redis, whose endpoint
    /// logs in for them).
    pub logs_in: bool,
    pub query: Value,
}

/// `$ENDPOINT_PASSWORD_i`, where a provisioning script finds the password of the `i`th
/// endpoint.
pub(super) fn endpoint_password_variable(index: usize) -> String {
    format!("ENDPOINT_PASSWORD_{index}")
}

/// The user that owns `database` in PostgreSQL: the first endpoint with every privilege on it,
/// else the superuser.
fn owner_of<'a>(endpoints: &'a ServiceEndpoints, database: &str) -> &'a str {
    endpoints
        .endpoints
        .values()
        .find(|e| e.privileges.get(database) == Some(&Privilege::Admin))
        .map_or("postgres", |e| e.username.as_str())
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
                // `-R` makes the copy a standby. A data folder that is no standby's was a
                // primary's, replaced by a promotion since: what it holds beyond the new
                // primary was never confirmed to anyone, so it is set aside and copied again.
                format!(
                    "if test -f /app/pg/PG_VERSION && ! test -f /app/pg/standby.signal; then rm -rf /app/pg.replaced && mv /app/pg /app/pg.replaced; fi\ntest -f /app/pg/PG_VERSION || PGPASSWORD=\"$SERVICE_PASSWORD\" exec {basebackup} -h {host} -p {port} -U {REPLICATION_USER} -D /app/pg -R -X stream -c fast",
                    basebackup = program(programs, "pg_basebackup")
                )
            }
            _ => format!(
                "test -f /app/pg/PG_VERSION || {{ {initdb} -D /app/pg -U postgres --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 --no-instructions && printf 'shared_buffers = 32MB\\nwal_keep_size = 256MB\\n' >> /app/pg/postgresql.conf; }}",
                initdb = program(programs, "initdb")
            ),
        })
    }

    fn start_script(&self, programs: &Programs, server: &Server<'_>) -> String {
        // A replica follows whichever primary its role names now, not the one it was copied
        // from, with the password from a file rather than on the command line.
        let follow = match server.role {
            ServiceRole::Replica { primary, .. } => {
                let (host, port) = host_and_port(primary, "5432");
                format!(
                    " -c 'primary_conninfo=host={host} port={port} user={REPLICATION_USER} passfile=/app/pgpass'"
                )
            }
            _ => String::new(),
        };
        // The superuser comes in only through the socket in the sandbox's own /run. A stop
        // is PostgreSQL's fast shutdown (SIGINT): its own SIGTERM waits for every session to
        // end, and its sessions are beyond the reach of a stop (each leads a process group).
        // Other nodes log in by password: replicas, and endpoints to the primary.
        format!(
            "grep -q '^host all all 0.0.0.0/0' /app/pg/pg_hba.conf || printf 'host all all 0.0.0.0/0 scram-sha-256\\nhost replication all 0.0.0.0/0 scram-sha-256\\n' >> /app/pg/pg_hba.conf\n{postgres} -D /app/pg -c listen_addresses={listen} -c port={port} -c unix_socket_directories=/run -c logging_collector=off{follow} &\nserver=$!\ntrap 'kill -INT $server' TERM\nwait $server; code=$?\nif kill -0 $server 2>/dev/null; then wait $server; code=$?; fi\nexit $code",
            postgres = program(programs, "postgres"),
            listen = server.listen(","),
            port = server.port,
        )
    }

    fn config_files(&self, server: &Server<'_>) -> Vec<(&'static str, String)> {
        match server.role {
            ServiceRole::Replica { primary, .. } => {
                let (host, port) = host_and_port(primary, "5432");
                vec![(
                    "pgpass",
                    format!("{host}:{port}:*:{REPLICATION_USER}:{}\n", server.password),
                )]
            }
            _ => Vec::new(),
        }
    }

    fn provision_script(
        &self,
        programs: &Programs,
        port: u16,
        replicas: u32,
        endpoints: &ServiceEndpoints,
    ) -> Option<String> {
        // With replicas, a commit is confirmed once one of them has it too, so that it
        // survives the loss of the primary's node. Kept in the data folder, so that the server
        // has it from its first moment after a restart. The commits below need no replica: a
        // replica is a copy of the primary made after them.
        let synchronous = if replicas > 0 {
            "SET synchronous_standby_names TO 'ANY 1 (*)'"
        } else {
            "RESET synchronous_standby_names"
        };
        let mut sql = format!(
            "SELECT pg_promote(true, 60) WHERE pg_is_in_recovery() \\g /dev/null
ALTER SYSTEM {synchronous};
SELECT pg_reload_conf() \\g /dev/null
SET synchronous_commit TO local;
SELECT 'CREATE ROLE {REPLICATION_USER} REPLICATION LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATION_USER}')\\gexec
ALTER ROLE {REPLICATION_USER} PASSWORD '$SERVICE_PASSWORD';
"
        );
        for (index, endpoint) in endpoints.endpoints.values().enumerate() {
            let user = &endpoint.username;
            let password = endpoint_password_variable(index);
            sql.push_str(&format!(
                "SELECT 'CREATE ROLE \"{user}\" LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}')\\gexec
ALTER ROLE \"{user}\" PASSWORD '${password}';
"
            ));
        }
        for database in &endpoints.databases {
            let owner = owner_of(endpoints, database);
            sql.push_str(&format!(
                "SELECT 'CREATE DATABASE \"{database}\" OWNER \"{owner}\"' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{database}')\\gexec
REVOKE CONNECT, TEMPORARY ON DATABASE \"{database}\" FROM PUBLIC;
\\c \"{database}\"
SET synchronous_commit TO local;
"
            ));
            for extension in &endpoints.extensions {
                sql.push_str(&format!(
                    "CREATE EXTENSION IF NOT EXISTS \"{extension}\";\n"
                ));
            }
            for endpoint in endpoints.endpoints.values() {
                let user = &endpoint.username;
                if user == owner {
                    continue;
                }
                sql.push_str(&format!(
                    "REVOKE ALL ON DATABASE \"{database}\" FROM \"{user}\";
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM \"{user}\";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM \"{user}\";
ALTER DEFAULT PRIVILEGES FOR ROLE \"{owner}\" IN SCHEMA public REVOKE ALL ON TABLES FROM \"{user}\";
ALTER DEFAULT PRIVILEGES FOR ROLE \"{owner}\" IN SCHEMA public REVOKE ALL ON SEQUENCES FROM \"{user}\";
"
                ));
                if owner != "postgres" {
                    sql.push_str(&format!("REVOKE \"{owner}\" FROM \"{user}\";\n"));
                }
                let Some(privilege) = endpoint.privileges.get(database) else {
                    continue;
                };
                let (tables, sequences) = match privilege {
                    Privilege::Ro => ("SELECT", "SELECT"),
                    Privilege::Rw => ("SELECT, INSERT, UPDATE, DELETE", "USAGE, SELECT, UPDATE"),
                    Privilege::Admin => ("ALL", "ALL"),
                };
                sql.push_str(&format!(
                    "GRANT CONNECT, TEMPORARY ON DATABASE \"{database}\" TO \"{user}\";
GRANT USAGE ON SCHEMA public TO \"{user}\";
GRANT {tables} ON ALL TABLES IN SCHEMA public TO \"{user}\";
GRANT {sequences} ON ALL SEQUENCES IN SCHEMA public TO \"{user}\";
ALTER DEFAULT PRIVILEGES FOR ROLE \"{owner}\" IN SCHEMA public GRANT {tables} ON TABLES TO \"{user}\";
ALTER DEFAULT PRIVILEGES FOR ROLE \"{owner}\" IN SCHEMA public GRANT {sequences} ON SEQUENCES TO \"{user}\";
"
                ));
                // Another administrator acts as the owner, whose objects are everyone's.
                if *privilege == Privilege::Admin && owner != "postgres" {
                    sql.push_str(&format!(
                        "GRANT ALL ON DATABASE \"{database}\" TO \"{user}\";
GRANT \"{owner}\" TO \"{user}\";
"
                    ));
                }
            }
            sql.push_str("\\c postgres\n");
        }
        Some(format!(
            "{psql} -h /run -p {port} -U postgres -d postgres -v ON_ERROR_STOP=1 -q <<SQL\n{sql}SQL",
            psql = program(programs, "psql")
        ))
    }

    fn replication_script(&self, programs: &Programs, port: u16) -> String {
        format!(
            "{psql} -h /run -p {port} -U postgres -d postgres -tA -F ' ' -c \"SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'stopped'), coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint, pg_wal_lsn_diff(greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), '0/0')::bigint\"",
            psql = program(programs, "psql")
        )
    }

    fn snapshot_script(&self, programs: &Programs, port: u16) -> String {
        // The base backup as one tar, with the WAL that makes it consistent.
        format!(
            "{basebackup} -h /run -p {port} -U postgres -D - -F tar -X fetch -c fast",
            basebackup = program(programs, "pg_basebackup")
        )
    }

    fn unpack_script(&self, _programs: &Programs) -> String {
        // The copy recovers from its backup label when it starts, as a primary of its own.
        "rm -rf /app/pg.restored && mkdir -m 700 /app/pg.restored && tar -x -f - -C /app/pg.restored && rm -f /app/pg.restored/standby.signal".into()
    }

    fn swap_script(&self) -> &'static str {
        "rm -rf /app/pg && mv /app/pg.restored /app/pg"
    }

    fn discard_script(&self) -> &'static str {
        "rm -rf /app/pg /app/pg.replaced"
    }

    fn relationship(&self) -> Shape {
        Shape {
            scheme: "pgsql",
            logs_in: true,
            query: json!({"is_master": true}),
        }
    }
}

struct Mariadb;

/// Galera's library, from Debian's `galera-4`.
const GALERA: &str = "/usr/lib/galera/libgalera_smm.so";

impl Engine for Mariadb {
    fn init_script(&self, programs: &Programs, _role: &ServiceRole) -> Option<String> {
        // The administrator is the sandbox's user through the socket, and nobody over the
        // network.
        Some(format!(
            "test -d /app/mysql/mysql || {install} --no-defaults --datadir=/app/mysql --auth-root-authentication-method=socket --auth-root-socket-user={SANDBOX_USER} --skip-test-db >/dev/null",
            install = program(programs, "mariadb-install-db")
        ))
    }

    fn start_script(&self, programs: &Programs, server: &Server<'_>) -> String {
        // A new cluster starts on its primary; a cluster that was stopped whole starts again
        // on the member Galera marked safe to start it, the last one to leave. Every other
        // member joins, retried until a member is there (after a crash of every member,
        // Galera's `pc.recovery` forms the cluster again once they are all back).
        let first = matches!(server.role, ServiceRole::Primary { .. });
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
            "[mysqld]\ndatadir=/app/mysql\nsocket=/run/mysqld.sock\nport={port}\nbind-address={listen}\npid-file=/run/mariadbd.pid\nskip-name-resolve\ntmpdir=/tmp\ninnodb-buffer-pool-size=64M\ninnodb-log-file-size=16M\n",
            port = server.port,
            listen = server.listen(","),
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
            let own = format!("{}:{member}", server.address);
            let others: Vec<String> = members.into_iter().filter(|m| *m != own).collect();
            config.push_str(&format!(
                "binlog-format=ROW\ninnodb-autoinc-lock-mode=2\nwsrep-on=ON\nwsrep-provider={GALERA}\nwsrep-cluster-name={name}\nwsrep-node-name={member}\nwsrep-node-address={address}\nwsrep-provider-options=\"gmcast.listen_addr=tcp://{address}:{member};ist.recv_addr={address}:{ist};pc.recovery=TRUE\"\nwsrep-sst-method=rsync\nwsrep-sst-receive-address={address}:{sst}\nwsrep-cluster-address=gcomm://{others}\n",
                name = server.name,
                others = others.join(","),
                address = server.address,
            ));
        }
        vec![("lockstep.cnf", config)]
    }

    fn provision_script(
        &self,
        programs: &Programs,
        _port: u16,
        _replicas: u32,
        endpoints: &ServiceEndpoints,
    ) -> Option<String> {
        // Every Galera member takes writes: a primary is only where the endpoints point. A
        // user's privileges are what the configuration says now, no more. Names are quoted
        // with backquotes, escaped from the shell's here-document.
        let mut sql = String::new();
        for database in &endpoints.databases {
            sql.push_str(&format!(
                "CREATE DATABASE IF NOT EXISTS \\`{database}\\`;\n"
            ));
        }
        for (index, endpoint) in endpoints.endpoints.values().enumerate() {
            let user = format!("'{}'@'%'", endpoint.username);
            let password = endpoint_password_variable(index);
            sql.push_str(&format!(
                "CREATE USER IF NOT EXISTS {user} IDENTIFIED BY '${password}';
ALTER USER {user} IDENTIFIED BY '${password}';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM {user};
"
            ));
            for (database, privilege) in &endpoint.privileges {
                let granted = match privilege {
                    Privilege::Ro => "SELECT, SHOW VIEW",
                    Privilege::Rw => {
                        "SELECT, INSERT, UPDATE, DELETE, CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, SHOW VIEW"
                    }
                    Privilege::Admin => "ALL PRIVILEGES",
                };
                sql.push_str(&format!(
                    "GRANT {granted} ON \\`{database}\\`.* TO {user};\n"
                ));
            }
        }
        Some(format!(
            "{mariadb} --no-defaults -S /run/mysqld.sock -u {SANDBOX_USER} <<SQL\n{sql}SQL",
            mariadb = program(programs, "mariadb")
        ))
    }

    fn replication_script(&self, programs: &Programs, _port: u16) -> String {
        format!(
            "{mariadb} --no-defaults -S /run/mysqld.sock -u {SANDBOX_USER} -N -e \"SHOW STATUS WHERE Variable_name IN ('wsrep_local_state_comment', 'wsrep_last_committed')\" | awk '{{v[$1] = $2}} END {{print v[\"wsrep_local_state_comment\"], \"-\", v[\"wsrep_last_committed\"]}}'",
            mariadb = program(programs, "mariadb")
        )
    }

    fn snapshot_script(&self, programs: &Programs, _port: u16) -> String {
        // InnoDB's pages copied while the server writes, with its log to make them consistent.
        format!(
            "rm -rf /tmp/backup && {backup} --backup --stream=mbstream --target-dir=/tmp/backup --datadir=/app/mysql --socket=/run/mysqld.sock --user={SANDBOX_USER} 2>/tmp/backup.log || {{ tail -n 20 /tmp/backup.log >&2; exit 1; }}",
            backup = program(programs, "mariadb-backup")
        )
    }

    fn unpack_script(&self, programs: &Programs) -> String {
        // A restored folder starts a Galera cluster of its own, never the one it was taken from.
        format!(
            "rm -rf /app/mysql.restored && mkdir /app/mysql.restored && {mbstream} -x -C /app/mysql.restored && {backup} --prepare --target-dir=/app/mysql.restored 2>/tmp/prepare.log || {{ tail -n 20 /tmp/prepare.log; exit 1; }}\nrm -f /app/mysql.restored/grastate.dat /app/mysql.restored/gvwstate.dat /app/mysql.restored/galera.cache",
            mbstream = program(programs, "mbstream"),
            backup = program(programs, "mariadb-backup")
        )
    }

    fn swap_script(&self) -> &'static str {
        "rm -rf /app/mysql && mv /app/mysql.restored /app/mysql"
    }

    fn discard_script(&self) -> &'static str {
        "rm -rf /app/mysql"
    }

    fn relationship(&self) -> Shape {
        Shape {
            scheme: "mysql",
            logs_in: true,
            query: json!({"is_master": true}),
        }
    }
}

struct Redis;

impl Engine for Redis {
    fn init_script(&self, _programs: &Programs, _role: &ServiceRole) -> Option<String> {
        None
    }

    fn start_script(&self, programs: &Programs, _server: &Server<'_>) -> String {
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
        let listen = server.listen(" ");
        // In a file, not on the command line, where any local user could read the password.
        vec![(
            "redis.conf",
            format!(
                "bind {listen}\nport {port}\nprotected-mode yes\ndir /app\ndaemonize no\nlogfile \"\"\nrequirepass {password}\nmasterauth {password}\nappendonly {appendonly}\nsave \"{save}\"\nrepl-diskless-sync-delay 0\n{follow}"
            ),
        )]
    }

    fn provision_script(
        &self,
        programs: &Programs,
        port: u16,
        _replicas: u32,
        _endpoints: &ServiceEndpoints,
    ) -> Option<String> {
        // A replica promoted in place stops following; its data is the primary's now.
        Some(format!(
            "REDISCLI_AUTH=\"$SERVICE_PASSWORD\" {cli} -p {port} REPLICAOF NO ONE >/dev/null",
            cli = program(programs, "redis-cli")
        ))
    }

    fn replication_script(&self, programs: &Programs, port: u16) -> String {
        format!(
            "REDISCLI_AUTH=\"$SERVICE_PASSWORD\" {cli} -p {port} INFO replication | tr -d '\\r' | awk -F: '{{v[$1] = $2}} END {{print v[\"master_link_status\"], \"-\", v[\"slave_repl_offset\"]}}'",
            cli = program(programs, "redis-cli")
        )
    }

    fn snapshot_script(&self, programs: &Programs, port: u16) -> String {
        // The server forks to write it; its clients go on meanwhile.
        format!(
            "REDISCLI_AUTH=\"$SERVICE_PASSWORD\" {cli} -p {port} --rdb /tmp/snapshot.rdb >&2 && cat /tmp/snapshot.rdb\nsaid=$?\nrm -f /tmp/snapshot.rdb\nexit $said",
            cli = program(programs, "redis-cli")
        )
    }

    fn unpack_script(&self, _programs: &Programs) -> String {
        // A server without persistence loads `dump.rdb`; a persistent one loads its
        // append-only files only, whose base may be an RDB: the snapshot is both.
        "set -e
rm -rf /app/appendonlydir.restored && mkdir /app/appendonlydir.restored
cat > /app/appendonlydir.restored/appendonly.aof.1.base.rdb
: > /app/appendonlydir.restored/appendonly.aof.1.incr.aof
printf 'file appendonly.aof.1.base.rdb seq 1 type b\\nfile appendonly.aof.1.incr.aof seq 1 type i\\n' > /app/appendonlydir.restored/appendonly.aof.manifest
cp /app/appendonlydir.restored/appendonly.aof.1.base.rdb /app/dump.rdb.restored".into()
    }

    fn swap_script(&self) -> &'static str {
        "set -e
rm -rf /app/appendonlydir && mv /app/appendonlydir.restored /app/appendonlydir
mv /app/dump.rdb.restored /app/dump.rdb"
    }

    fn discard_script(&self) -> &'static str {
        "rm -rf /app/appendonlydir /app/dump.rdb"
    }

    fn relationship(&self) -> Shape {
        // Platform.sh's Redis takes no password: the node's endpoint gives it.
        Shape {
            scheme: "redis",
            logs_in: false,
            query: json!({}),
        }
    }

    fn endpoint_login(&self, password: &str) -> Option<(Vec<u8>, &'static [u8])> {
        Some((format!("AUTH {password}\r\n").into_bytes(), b"+OK\r\n"))
    }
}
