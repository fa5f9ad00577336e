//! Services on nodes as the controller drives them: real agent processes run PostgreSQL,
//! MariaDB and Redis in their sandboxes, and real clients connect through each service's
//! endpoint, the port an app's relationship names.

mod support;

use std::process::Command;
use std::time::Duration;

use lockstep_proto::agent::{ProcessState, ServiceKind, ServiceRole, ServiceSpec, ServiceStatus};
use support::*;

const ENV: &str = "staging";
const PASSWORD: &str = "0123456789abcdef0123456789abcdef";

fn spec(name: &str, engine: ServiceKind, service_type: &str, role: ServiceRole) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        engine,
        service_type: service_type.into(),
        persistent: true,
        disk_mb: Some(512),
        password: PASSWORD.into(),
        role,
        endpoints: lockstep_proto::agent::ServiceEndpoints::default_for(engine),
    }
}

fn all_three() -> Vec<ServiceSpec> {
    vec![
        spec(
            "db",
            ServiceKind::Postgresql,
            "postgresql:15",
            ServiceRole::Primary {
                replicas: 0,
                cluster: Vec::new(),
            },
        ),
        spec(
            "shop",
            ServiceKind::Mariadb,
            "mysql:10.11",
            ServiceRole::Primary {
                replicas: 0,
                cluster: Vec::new(),
            },
        ),
        spec(
            "cache",
            ServiceKind::Redis,
            "redis-persistent:7.0",
            ServiceRole::Primary {
                replicas: 0,
                cluster: Vec::new(),
            },
        ),
    ]
}

async fn ensure(client: &AgentClient, specs: &[ServiceSpec]) -> Vec<ServiceStatus> {
    ensure_in(client, ENV, specs).await
}

async fn ensure_in(client: &AgentClient, env: &str, specs: &[ServiceSpec]) -> Vec<ServiceStatus> {
    let path = format!("/v1/instances/{env}/services");
    let body = client
        .send(client.http.put(client.url(&path)).json(specs))
        .await
        .ok();
    serde_json::from_value(body).unwrap()
}

fn named<'a>(statuses: &'a [ServiceStatus], name: &str) -> &'a ServiceStatus {
    statuses
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name} in {statuses:?}"))
}

/// Runs a client program; its output, or its error output when it fails.
fn client(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() && !text.starts_with("ERR") && !text.starts_with("NOAUTH") {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&output.stderr)))
    }
}

fn psql(port: u16, sql: &str) -> Result<String, String> {
    psql_as(port, PASSWORD, sql)
}

/// `sql` as the app's user `main`, with its password.
fn psql_as(port: u16, password: &str, sql: &str) -> Result<String, String> {
    client(
        "psql",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "main",
            "-d",
            "main",
            "-qtAc",
            sql,
        ],
        &[("PGPASSWORD", password), ("PGCONNECT_TIMEOUT", "10")],
    )
}

fn mariadb(port: u16, sql: &str) -> Result<String, String> {
    mariadb_as(port, PASSWORD, sql)
}

/// `sql` as the app's user `user`, with its password.
fn mariadb_as(port: u16, password: &str, sql: &str) -> Result<String, String> {
    client(
        "mariadb",
        &[
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "-u",
            "user",
            &format!("-p{password}"),
            "main",
            "-N",
            "-e",
            sql,
        ],
        &[],
    )
}

fn redis(port: u16, args: &[&str]) -> Result<String, String> {
    let port = port.to_string();
    let mut all = vec!["-p", port.as_str()];
    all.extend(args);
    client("redis-cli", &all, &[])
}

#[tokio::test]
async fn each_engine_serves_through_its_endpoint_and_keeps_its_data_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::start(data.path()).await;
    agent
        .client()
        .configure(&instance_config(ENV, storage.path()))
        .await;

    let services = ensure(&agent.client(), &all_three()).await;
    for service in &services {
        assert_eq!(service.process, Some(ProcessState::Running), "{service:?}");
        assert_ne!(service.endpoint_port, service.port);
    }
    let db = named(&services, "db").endpoint_port;
    let shop = named(&services, "shop").endpoint_port;
    let cache = named(&services, "cache");
    assert_eq!(
        psql(
            db,
            "CREATE TABLE orders (id int); INSERT INTO orders VALUES (42); SELECT id FROM orders"
        )
        .unwrap(),
        "42"
    );
    assert_eq!(
        mariadb(
            shop,
            "CREATE TABLE carts (id int); INSERT INTO carts VALUES (7); SELECT id FROM carts"
        )
        .unwrap(),
        "7"
    );
    // Apps reach Redis without a password, as on Platform.sh; the engine itself wants one.
    assert_eq!(
        redis(cache.endpoint_port, &["SET", "visits", "3"]).unwrap(),
        "OK"
    );
    assert!(
        redis(cache.port, &["GET", "visits"])
            .unwrap_err()
            .contains("NOAUTH")
    );
    // A wrong password is refused at the engine, endpoint or not.
    let wrong = psql_as(db, "wrong", "SELECT 1");
    assert!(
        wrong
            .unwrap_err()
            .contains("password authentication failed")
    );

    // Sent again, nothing moves.
    let places = |statuses: &[ServiceStatus]| -> Vec<(String, u16, u16, Option<ProcessState>)> {
        statuses
            .iter()
            .map(|s| (s.name.clone(), s.port, s.endpoint_port, s.process.clone()))
            .collect()
    };
    let again = ensure(&agent.client(), &all_three()).await;
    assert_eq!(places(&again), places(&services));

    agent.kill();
    let agent = AgentProcess::start(data.path()).await;
    let back = agent.client().status(ENV).await.services;
    assert_eq!(back.len(), 3, "{back:?}");
    // The agent answers at once and starts its services behind it.
    eventually(Duration::from_secs(30), "PostgreSQL back", || async {
        psql(db, "SELECT id FROM orders").is_ok_and(|id| id == "42")
    })
    .await;
    eventually(Duration::from_secs(30), "MariaDB back", || async {
        mariadb(shop, "SELECT 1").is_ok()
    })
    .await;
    assert_eq!(mariadb(shop, "SELECT id FROM carts").unwrap(), "7");
    eventually(Duration::from_secs(30), "Redis back", || async {
        redis(cache.endpoint_port, &["GET", "visits"]).is_ok_and(|v| v == "3")
    })
    .await;

    // A service the configuration drops stops; its data stays for when it comes back.
    let without_cache: Vec<ServiceSpec> = all_three().into_iter().take(2).collect();
    let services = ensure(&agent.client(), &without_cache).await;
    assert!(services.iter().all(|s| s.name != "cache"));
    assert!(redis(cache.endpoint_port, &["PING"]).is_err());
    assert!(std::net::TcpStream::connect(("127.0.0.1", cache.port)).is_err());
    let services = ensure(&agent.client(), &all_three()).await;
    assert_eq!(named(&services, "cache").endpoint_port, cache.endpoint_port);
    assert_eq!(redis(cache.endpoint_port, &["GET", "visits"]).unwrap(), "3");
}

#[tokio::test]
async fn a_snapshot_of_each_engine_gives_another_environment_its_rows_with_its_own_passwords() {
    let data = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(data.path()).await;
    let client = agent.client();
    client
        .configure(&instance_config(ENV, storage.path()))
        .await;
    let source = ensure(&client, &all_three()).await;
    let (db, shop, cache) = (
        named(&source, "db").endpoint_port,
        named(&source, "shop").endpoint_port,
        named(&source, "cache").endpoint_port,
    );
    psql(
        db,
        "CREATE TABLE orders (id int); INSERT INTO orders VALUES (42)",
    )
    .unwrap();
    mariadb(
        shop,
        "CREATE TABLE carts (id int); INSERT INTO carts VALUES (7)",
    )
    .unwrap();
    redis(cache, &["SET", "visits", "3"]).unwrap();

    // Another environment, its own user and passwords, on the same node.
    const CLONE: &str = "feature";
    const CLONE_PASSWORD: &str = "fedcba9876543210fedcba9876543210";
    let mut config = instance_config(CLONE, storage.path());
    config.user = Some(lockstep_proto::agent::AppUser {
        uid: APP_USER.uid - 1,
        gid: APP_USER.gid - 1,
    });
    client.configure(&config).await;
    let own_password = |mut spec: ServiceSpec| {
        spec.password = CLONE_PASSWORD.into();
        spec
    };
    let specs: Vec<ServiceSpec> = all_three().into_iter().map(own_password).collect();
    ensure_in(&client, CLONE, &specs).await;
    let mut restored = Vec::new();
    for service in ["db", "shop", "cache"] {
        let snapshot = client
            .http
            .post(client.url(&format!("/v1/instances/{ENV}/services/{service}/snapshot")))
            .send()
            .await
            .unwrap();
        assert!(snapshot.status().is_success(), "{}", snapshot.status());
        let bytes = snapshot.bytes().await.unwrap();
        assert!(!bytes.is_empty(), "{service}'s snapshot is empty");
        let path = format!("/v1/instances/{CLONE}/services/{service}/data");
        let answer = client
            .send(client.http.put(client.url(&path)).body(bytes))
            .await
            .ok();
        restored = serde_json::from_value(answer).unwrap();
    }
    let (clone_db, clone_shop, clone_cache) = (
        named(&restored, "db").endpoint_port,
        named(&restored, "shop").endpoint_port,
        named(&restored, "cache").endpoint_port,
    );
    assert_eq!(
        psql_as(clone_db, CLONE_PASSWORD, "SELECT id FROM orders").unwrap(),
        "42"
    );
    assert_eq!(
        mariadb_as(clone_shop, CLONE_PASSWORD, "SELECT id FROM carts").unwrap(),
        "7"
    );
    assert_eq!(redis(clone_cache, &["GET", "visits"]).unwrap(), "3");
    // The copy takes this environment's passwords, not the source's.
    assert!(psql_as(clone_db, PASSWORD, "SELECT 1").is_err());
    assert!(mariadb_as(clone_shop, PASSWORD, "SELECT 1").is_err());

    // Writes to the copy stay there.
    psql_as(clone_db, CLONE_PASSWORD, "INSERT INTO orders VALUES (43)").unwrap();
    mariadb_as(clone_shop, CLONE_PASSWORD, "INSERT INTO carts VALUES (8)").unwrap();
    redis(clone_cache, &["SET", "visits", "4"]).unwrap();
    assert_eq!(psql(db, "SELECT count(*) FROM orders").unwrap(), "1");
    assert_eq!(mariadb(shop, "SELECT count(*) FROM carts").unwrap(), "1");
    assert_eq!(redis(cache, &["GET", "visits"]).unwrap(), "3");

    // A snapshot that breaks off on its way replaces nothing: the copy's server serves on.
    let snapshot = client
        .http
        .post(client.url(&format!("/v1/instances/{ENV}/services/db/snapshot")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let half = snapshot.slice(..snapshot.len() / 2);
    let broken = futures_util::stream::iter([
        Ok(half),
        Err(std::io::Error::other("the network went away")),
    ]);
    let path = format!("/v1/instances/{CLONE}/services/db/data");
    let answer = client
        .http
        .put(client.url(&path))
        .body(reqwest::Body::wrap_stream(broken))
        .send()
        .await;
    assert!(
        answer.is_err() || !answer.unwrap().status().is_success(),
        "a broken snapshot was taken"
    );
    assert_eq!(
        psql_as(clone_db, CLONE_PASSWORD, "SELECT count(*) FROM orders").unwrap(),
        "2"
    );
}

#[tokio::test]
async fn another_user_on_the_host_cannot_use_an_environments_endpoint() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(data.path()).await;
    agent
        .client()
        .configure(&instance_config(ENV, storage.path()))
        .await;
    let cache = spec(
        "cache",
        ServiceKind::Redis,
        "redis:7.0",
        ServiceRole::Primary {
            replicas: 0,
            cluster: Vec::new(),
        },
    );
    let services = ensure(&agent.client(), &[cache]).await;
    let port = named(&services, "cache").endpoint_port.to_string();
    let as_user = |uid: u32| {
        client(
            "setpriv",
            &[
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "redis-cli",
                "-p",
                &port,
                "PING",
            ],
            &[],
        )
    };
    assert_eq!(as_user(APP_USER.uid).unwrap(), "PONG");
    assert!(
        as_user(APP_USER.uid - 1).is_err(),
        "another environment's user got in"
    );
}

#[tokio::test]
async fn a_node_without_the_primary_reaches_it_through_its_own_endpoint() {
    let (first_data, second_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let storage = tempfile::tempdir().unwrap();
    let first = AgentProcess::start(first_data.path()).await;
    let second = AgentProcess::start(second_data.path()).await;
    for agent in [&first, &second] {
        agent
            .client()
            .configure(&instance_config(ENV, storage.path()))
            .await;
    }
    let primary = ensure(
        &first.client(),
        &[spec(
            "db",
            ServiceKind::Postgresql,
            "postgresql:15",
            ServiceRole::Primary {
                replicas: 0,
                cluster: Vec::new(),
            },
        )],
    )
    .await;
    let primary = named(&primary, "db");
    let remote = ServiceRole::Remote {
        primary: format!("127.0.0.1:{}", primary.port),
    };
    let elsewhere = ensure(
        &second.client(),
        &[spec("db", ServiceKind::Postgresql, "postgresql:15", remote)],
    )
    .await;
    let elsewhere = named(&elsewhere, "db");
    assert_eq!(elsewhere.process, None, "no server runs on the second node");
    psql(
        elsewhere.endpoint_port,
        "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('hello')",
    )
    .unwrap();
    assert_eq!(
        psql(primary.endpoint_port, "SELECT body FROM notes").unwrap(),
        "hello"
    );
}

/// A platform whose production runs the services sample app, pushed.
async fn services_in_production() -> (Platform, Project) {
    let platform = Platform::start().await;
    let project = Project::example("services-app");
    let output = platform.push(&project, "HEAD:production");
    assert!(output.status.success(), "{}", text(&output));
    (platform, project)
}

async fn call(method: reqwest::Method, router: &str, path: &str) -> serde_json::Value {
    let response = router_client()
        .request(method, format!("{router}{path}"))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_production_push_runs_its_services_and_every_node_reaches_the_same_primary() {
    let platform = Platform::start().await;
    let project = Project::example("services-app");
    let output = platform.push(&project, "HEAD:production");
    assert!(output.status.success(), "{}", text(&output));
    let said = text(&output);
    assert!(
        said.contains("Service db on production-1: primary, ready"),
        "{said}"
    );
    assert!(
        said.contains("Service db on production-3: replica of 127.0.0.1:"),
        "{said}"
    );
    assert!(
        said.contains("Service carts on production-2: replica of 127.0.0.1:"),
        "{said}"
    );

    let routers = platform.routers("production").await;
    assert_eq!(routers.len(), 3);
    let mut counter = 0;
    for (i, router) in routers.iter().enumerate() {
        let added = call(
            reqwest::Method::POST,
            router,
            &format!("/notes?body=note%20{i}"),
        )
        .await;
        assert_eq!(added["node"], format!("production-{}", i + 1));
        call(reqwest::Method::POST, router, &format!("/carts?id={i}")).await;
        counter = call(reqwest::Method::POST, router, "/counter").await["counter"]
            .as_i64()
            .unwrap();
    }
    assert_eq!(counter, 3, "one Redis counts for every node");
    for router in &routers {
        let notes = call(reqwest::Method::GET, router, "/notes").await;
        assert_eq!(
            notes["notes"],
            serde_json::json!(["note 0", "note 1", "note 2"])
        );
        let carts = call(reqwest::Method::GET, router, "/carts").await;
        assert_eq!(carts["carts"], serde_json::json!([0, 1, 2]));
    }
    let migrations = call(reqwest::Method::GET, &routers[0], "/migrations").await;
    assert_eq!(
        migrations["migrations"].as_array().unwrap().len(),
        1,
        "{migrations}"
    );

    // Each other node keeps a copy with the engine's own replication, and apps there still
    // wrote to the primary.
    let kept_on = |node: &str| kept_on(&platform, node);
    let (primary, password) = server_of(&kept_on("production-1"), "db");
    let on_primary = psql_as(primary, &password, "SHOW synchronous_standby_names");
    assert_eq!(
        on_primary.unwrap(),
        "ANY 1 (*)",
        "a commit waits for a replica"
    );
    for node in ["production-2", "production-3"] {
        let kept = kept_on(node);
        assert_eq!(kept["services"]["db"]["spec"]["role"]["role"], "replica");
        let (replica, password) = server_of(&kept, "db");
        let sql = |query: &str| psql_as(replica, &password, query);
        assert_eq!(sql("SELECT pg_is_in_recovery()").unwrap(), "t");
        eventually(
            Duration::from_secs(10),
            "the notes on a replica",
            || async { sql("SELECT count(*) FROM notes").is_ok_and(|count| count == "3") },
        )
        .await;
        // MariaDB's other nodes are members of one Galera cluster.
        let (member, password) = server_of(&kept, "carts");
        let status = mariadb_as(member, &password, "SHOW STATUS LIKE 'wsrep_cluster_size'");
        assert_eq!(status.unwrap().split_whitespace().last(), Some("3"));
        assert_eq!(
            mariadb_as(member, &password, "SELECT count(*) FROM carts").unwrap(),
            "3",
            "Galera replicates synchronously"
        );
        let (port, password) = server_of(&kept, "counter");
        redis_replica_holds(port, &password, "counter", "3").await;
    }

    let status = text(&platform.cli(&["status"]));
    assert!(
        status.contains("service db (postgresql): primary, running"),
        "{status}"
    );
    // Each replica line says how it follows, in its engine's words.
    let replica_lines = |name: &str| -> Vec<String> {
        status
            .lines()
            .filter(|line| {
                line.contains(&format!("service {name} ("))
                    && line.contains("replica of 127.0.0.1:")
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(replica_lines("db").len(), 2, "{status}");
    assert!(
        replica_lines("db")
            .iter()
            .all(|l| l.contains("running, streaming (")),
        "{status}"
    );
    assert!(
        replica_lines("carts")
            .iter()
            .all(|l| l.contains("running, Synced, ")),
        "{status}"
    );
    assert!(
        replica_lines("counter")
            .iter()
            .all(|l| l.contains("running, up, ")),
        "{status}"
    );
    let log = platform.cli(&["logs", "production", "--service", "db"]);
    assert!(
        text(&log).contains("database system is ready to accept connections"),
        "{}",
        text(&log)
    );

    // The services' own clients, through the app's relationships, as `platform sql` does.
    let sql = platform.cli(&["sql", "production", "-c", "SELECT count(*) FROM notes"]);
    assert!(sql.status.success(), "{}", text(&sql));
    assert!(
        text(&sql).lines().any(|line| line.trim() == "3"),
        "{}",
        text(&sql)
    );
    let carts = platform.cli(&[
        "sql",
        "production",
        "--relationship",
        "shop",
        "--node",
        "production-3",
        "-c",
        "SELECT id FROM carts ORDER BY id",
    ]);
    assert_eq!(
        text(&carts).split_whitespace().collect::<Vec<_>>(),
        ["id", "0", "1", "2"]
    );
    let counter = platform.cli(&["redis", "production", "--", "GET", "counter"]);
    assert_eq!(text(&counter).trim(), "3");
    let wrong = platform.cli(&[
        "sql",
        "production",
        "--relationship",
        "cache",
        "-c",
        "SELECT 1",
    ]);
    assert_refused(&wrong, "relationship `cache` is to a redis service");

    // The next deployment migrates once more, against the same data.
    std::fs::write(project.path().join("VERSION"), "2").unwrap();
    project.commit("v2");
    let output = platform.push(&project, "HEAD:production");
    assert!(output.status.success(), "{}", text(&output));
    let migrations = call(reqwest::Method::GET, &routers[2], "/migrations").await;
    assert_eq!(
        migrations["migrations"].as_array().unwrap().len(),
        2,
        "{migrations}"
    );
    let notes = call(reqwest::Method::GET, &routers[1], "/notes").await;
    assert_eq!(notes["notes"].as_array().unwrap().len(), 3);

    // A service's version does not change under its data: refused, nothing else changes.
    let services = project.path().join(".platform/services.yaml");
    let text_now = std::fs::read_to_string(&services).unwrap();
    std::fs::write(
        &services,
        text_now.replace("postgresql:15", "postgresql:16"),
    )
    .unwrap();
    project.commit("postgresql 16");
    let output = platform.push(&project, "HEAD:production");
    assert!(!output.status.success(), "a version change was accepted");
    assert!(
        text(&output).contains("service `db` runs postgresql:15"),
        "{}",
        text(&output)
    );
    // The build said which version would have run, as it does for runtimes.
    assert!(
        text(&output).contains("`type: postgresql:16` asks for a version this machine does not have; it runs postgresql 15"),
        "{}",
        text(&output)
    );
    let notes = call(reqwest::Method::GET, &routers[0], "/notes").await;
    assert_eq!(notes["notes"].as_array().unwrap().len(), 3);
}

/// Where service `name`'s server listens on a node whose agent keeps `kept`
/// ([`kept_on`]), and its password.
fn server_of(kept: &serde_json::Value, name: &str) -> (u16, String) {
    let service = &kept["services"][name];
    (
        service["port"].as_u64().unwrap() as u16,
        service["spec"]["password"].as_str().unwrap().to_owned(),
    )
}

/// Waits until the Redis server at `port` holds `expected` at `key`, as a replica does once it
/// follows.
async fn redis_replica_holds(port: u16, password: &str, key: &str, expected: &str) {
    let port = port.to_string();
    eventually(
        Duration::from_secs(10),
        &format!("{key} = {expected} on a Redis replica"),
        || async {
            client(
                "redis-cli",
                &["-p", &port, "--no-auth-warning", "-a", password, "GET", key],
                &[],
            )
            .is_ok_and(|value| value == expected)
        },
    )
    .await;
}

/// What a production node's agent keeps of its services: each one's spec and ports.
fn kept_on(platform: &Platform, node: &str) -> serde_json::Value {
    let path = platform
        .data_dir
        .join("agents")
        .join(node)
        .join("instances/production/services/services.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_new_branch_starts_with_a_copy_of_its_parents_data_if_its_pusher_may_read_it() {
    let (platform, project) = services_in_production().await;
    let production = platform.routers("production").await;
    for note in ["first", "second"] {
        call(
            reqwest::Method::POST,
            &production[1],
            &format!("/notes?body={note}"),
        )
        .await;
    }
    call(reqwest::Method::POST, &production[0], "/carts?id=5").await;
    call(reqwest::Method::POST, &production[2], "/counter").await;
    call(reqwest::Method::POST, &production[2], "/counter").await;

    project.new_version("a feature");
    let output = platform.push(&project, "HEAD:refs/heads/feature");
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    for service in ["db", "carts", "counter"] {
        assert!(
            said.contains(&format!(
                "Service {service} cloned from production on production-1: "
            )),
            "{said}"
        );
    }
    let feature = &platform.routers("feature").await[0];
    let notes = call(reqwest::Method::GET, feature, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["first", "second"]));
    let carts = call(reqwest::Method::GET, feature, "/carts").await;
    assert_eq!(carts["carts"], serde_json::json!([5]));
    let counter = call(reqwest::Method::POST, feature, "/counter").await;
    assert_eq!(counter["counter"], 3, "production's counter, and one more");
    // Its deploy hook migrated the copy: production's run and its own.
    let migrations = call(reqwest::Method::GET, feature, "/migrations").await;
    assert_eq!(
        migrations["migrations"].as_array().unwrap().len(),
        2,
        "{migrations}"
    );

    // What the branch writes stays in the branch.
    call(reqwest::Method::POST, feature, "/notes?body=draft").await;
    call(reqwest::Method::POST, feature, "/carts?id=6").await;
    let notes = call(reqwest::Method::GET, &production[0], "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["first", "second"]));
    let carts = call(reqwest::Method::GET, &production[0], "/carts").await;
    assert_eq!(carts["carts"], serde_json::json!([5]));
    let counter = call(reqwest::Method::POST, &production[0], "/counter").await;
    assert_eq!(counter["counter"], 3);

    // Cloned once: its next push keeps what it wrote.
    project.new_version("more of the feature");
    let output = platform.push(&project, "HEAD:refs/heads/feature");
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        !text(&output).contains("cloned from production"),
        "{}",
        text(&output)
    );
    let notes = call(reqwest::Method::GET, feature, "/notes").await;
    assert_eq!(
        notes["notes"],
        serde_json::json!(["first", "second", "draft"])
    );

    // Someone who may not read production's data gets none of it in a branch of theirs.
    let token = platform.add_user("dev@example.com", &["--role", "development:contributor"]);
    let output = platform.push_as(&project, &token, "HEAD:refs/heads/intruder");
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("Creating environment intruder, with no data: dev@example.com may not read production's data"),
        "{said}"
    );
    let intruder = &platform.routers("intruder").await[0];
    let notes = call(reqwest::Method::GET, intruder, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!([]));
    let carts = call(reqwest::Method::GET, intruder, "/carts").await;
    assert_eq!(carts["carts"], serde_json::json!([]));
    let counter = call(reqwest::Method::POST, intruder, "/counter").await;
    assert_eq!(counter["counter"], 1);
}

#[tokio::test]
async fn env_branch_and_env_delete_make_and_remove_development_environments_with_their_data() {
    let (platform, _) = services_in_production().await;
    let production = &platform.routers("production").await[0];
    call(reqwest::Method::POST, production, "/notes?body=kept").await;

    let branched = platform.cli(&["env", "branch", "hotfix"]);
    let said = text(&branched);
    assert!(branched.status.success(), "{said}");
    assert!(
        said.contains("Creating environment hotfix on branch hotfix, as a clone of production"),
        "{said}"
    );
    assert!(
        said.contains("Service db cloned from production on production-1: "),
        "{said}"
    );
    assert!(said.contains("Deployment completed"), "{said}");
    let hotfix = &platform.routers("hotfix").await[0];
    let notes = call(reqwest::Method::GET, hotfix, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["kept"]));
    // The branch is in git, at production's commit: a push to it is a push to the environment.
    let remote = Command::new("git")
        .args([
            "ls-remote",
            &platform
                .git
                .replacen("http://", &format!("http://user:{}@", platform.token), 1),
        ])
        .args(["refs/heads/hotfix", "refs/heads/production"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    let refs = String::from_utf8_lossy(&remote.stdout).to_string();
    let commits: Vec<&str> = refs
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commits.len(),
        2,
        "{refs}{}",
        String::from_utf8_lossy(&remote.stderr)
    );
    assert_eq!(commits[0], commits[1], "{refs}");

    let empty = platform.cli(&["env", "branch", "scratch", "--no-clone-data"]);
    assert!(empty.status.success(), "{}", text(&empty));
    let scratch = &platform.routers("scratch").await[0];
    let notes = call(reqwest::Method::GET, scratch, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!([]));

    // Someone who sees production but may not read its data branches it only without its data.
    let token = platform.add_user(
        "dev@example.com",
        &["--role", "production:viewer,development:contributor"],
    );
    let as_dev = |args: &[&str]| platform.cli(&[args, &["--token", token.as_str()]].concat());
    let refused = as_dev(&["env", "branch", "peek"]);
    assert_refused(&refused, "dev@example.com may not read production's data");
    let allowed = as_dev(&["env", "branch", "peek", "--no-clone-data"]);
    assert!(allowed.status.success(), "{}", text(&allowed));
    let existing = platform.cli(&["env", "branch", "hotfix"]);
    assert_refused(&existing, "exists already");

    // A backup: a snapshot of each service, taken while it serves, kept by the controller.
    for env in ["production", "hotfix"] {
        let taken = platform.cli(&["backup", "create", env]);
        assert!(taken.status.success(), "{}", text(&taken));
        assert!(
            text(&taken).contains(&format!("of {env} taken")),
            "{}",
            text(&taken)
        );
    }
    let listed = platform.cli(&["backup", "list", "production", "--json"]);
    let backups: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let backups = backups.as_array().unwrap();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let services = backups[0]["services"].as_array().unwrap();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["carts", "counter", "db"]);
    assert!(
        services.iter().all(|s| s["bytes"].as_u64().unwrap() > 0),
        "{services:?}"
    );
    let snapshot = platform
        .data_dir
        .join("controller/backups/production")
        .join(backups[0]["id"].as_str().unwrap())
        .join("db.snapshot");
    let files = Command::new("tar")
        .arg("-tf")
        .arg(&snapshot)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&files.stdout)
            .lines()
            .any(|f| f == "PG_VERSION"),
        "PostgreSQL's snapshot is its base backup"
    );
    let denied = as_dev(&["backup", "create", "production"]);
    assert_refused(&denied, "may not back up production");

    // Deleting an environment removes it everywhere; a contributor may not, nor may anyone
    // delete a cluster, nor without saying yes.
    let on_node = platform
        .data_dir
        .join("agents/development-1/instances/hotfix");
    assert!(on_node.join("services").exists());
    let refusals = [
        (platform.cli(&["env", "delete", "hotfix"]), "add --yes"),
        (
            platform.cli(&["env", "delete", "production", "--yes"]),
            "only development environments are deleted",
        ),
        (
            as_dev(&["env", "delete", "peek", "--yes"]),
            "dev@example.com may not delete peek",
        ),
    ];
    for (refused, says) in refusals {
        assert!(!refused.status.success());
        assert!(text(&refused).contains(says), "{}", text(&refused));
    }
    let deleted = platform.cli(&["env", "delete", "hotfix", "--yes"]);
    assert!(deleted.status.success(), "{}", text(&deleted));
    assert!(
        text(&deleted).contains("Environment hotfix deleted"),
        "{}",
        text(&deleted)
    );
    assert!(!on_node.exists(), "the node keeps {}", on_node.display());
    assert!(!platform.data_dir.join("controller/backups/hotfix").exists());
    assert!(
        router_client()
            .get(format!("{hotfix}/notes"))
            .send()
            .await
            .is_err(),
        "its router still answers"
    );
    let listed = text(&platform.cli(&["env", "list"]));
    assert!(!listed.contains("hotfix"), "{listed}");
    let notes = call(reqwest::Method::GET, production, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["kept"]));
    // Its name is free again, and its new copy starts from production's data anew.
    let again = platform.cli(&["env", "branch", "hotfix"]);
    assert!(again.status.success(), "{}", text(&again));
    let hotfix = &platform.routers("hotfix").await[0];
    let notes = call(reqwest::Method::GET, hotfix, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["kept"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_and_a_sync_replace_an_environments_data_while_it_is_closed() {
    let (platform, _) = services_in_production().await;
    let production = &platform.routers("production").await[0];
    call(reqwest::Method::POST, production, "/notes?body=first").await;
    let branched = platform.cli(&["env", "branch", "feature"]);
    assert!(branched.status.success(), "{}", text(&branched));
    let feature = platform.routers("feature").await[0].clone();

    let taken = platform.cli(&["backup", "create", "feature"]);
    assert!(taken.status.success(), "{}", text(&taken));
    let listed = platform.cli(&["backup", "list", "feature", "--json"]);
    let backups: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let id = backups[0]["id"].as_str().unwrap().to_owned();
    call(reqwest::Method::POST, &feature, "/notes?body=draft").await;

    // Visitors keep getting answers through the edge while the data is replaced.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = edge_request_loop(platform.edge, "feature.localhost", "/notes", stop.clone());
    let restored = platform.cli(&["backup", "restore", "feature", &id, "--yes"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = looping.await.unwrap();
    let said = text(&restored);
    assert!(restored.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "Replacing the data with backup {id} while every node is closed"
        )),
        "{said}"
    );
    let (before, after) = ("[\"first\", \"draft\"]", "[\"first\"]");
    let mut restored_seen = false;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "answer {i}: {body}");
        if body.contains(before) {
            assert!(
                !restored_seen,
                "answer {i}: the old data after the restored"
            );
        } else {
            assert!(body.contains(after), "answer {i}: {body}");
            restored_seen = true;
        }
    }
    let notes = call(reqwest::Method::GET, &feature, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["first"]));
    let phases = Platform::phase_names(&platform.latest_activity().await);
    assert!(phases.contains(&"replace_data".to_owned()), "{phases:?}");

    // A sync takes the parent's data as it is now.
    call(reqwest::Method::POST, production, "/notes?body=second").await;
    let synced = platform.cli(&["env", "sync", "feature", "--data"]);
    assert!(synced.status.success(), "{}", text(&synced));
    let notes = call(reqwest::Method::GET, &feature, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["first", "second"]));

    let unknown = platform.cli(&["backup", "restore", "feature", "a999999", "--yes"]);
    assert_refused(&unknown, "feature has no backup a999999");

    // A replica of production's data, sanitized before it opens; production keeps its own.
    let hide = "python3 -c \"from services import postgresql; postgresql(\\\"UPDATE notes SET body = 'hidden'\\\")\"";
    let replicate_sanitized = |command: &str| {
        platform.cli(&[
            "env",
            "replicate",
            "--from",
            "production",
            "--to",
            "feature",
            "--sanitize",
            command,
        ])
    };
    let replicated = replicate_sanitized(hide);
    assert!(replicated.status.success(), "{}", text(&replicated));
    let notes = call(reqwest::Method::GET, &feature, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["hidden", "hidden"]));
    let notes = call(reqwest::Method::GET, production, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["first", "second"]));
    // A sanitize command that fails keeps the copy closed: unsanitized data is never served.
    let failed = replicate_sanitized("exit 3");
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        text(&failed).contains("the sanitize command failed (exit status 3)"),
        "{}",
        text(&failed)
    );
    let (status, _) = release_of(&feature).await;
    assert_eq!(status, 503, "the environment stays closed");
    // A backup restored opens it again.
    let reopened = platform.cli(&["backup", "restore", "feature", &id, "--yes"]);
    assert!(reopened.status.success(), "{}", text(&reopened));
    let notes = call(reqwest::Method::GET, &feature, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["first"]));

    // Production's live data is replaced only on purpose.
    let unforced = platform.cli(&[
        "env",
        "replicate",
        "--from",
        "feature",
        "--to",
        "production",
    ]);
    assert_refused(&unforced, "add --force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_production_reaches_every_engine_and_every_replica_copies_it() {
    let (platform, _) = services_in_production().await;
    let routers = platform.routers("production").await;
    call(reqwest::Method::POST, &routers[0], "/notes?body=kept").await;
    call(reqwest::Method::POST, &routers[0], "/carts?id=1").await;
    call(reqwest::Method::POST, &routers[0], "/counter").await;
    let taken = platform.cli(&["backup", "create", "production"]);
    assert!(taken.status.success(), "{}", text(&taken));
    let listed = platform.cli(&["backup", "list", "production", "--json"]);
    let backups: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let id = backups[0]["id"].as_str().unwrap().to_owned();
    call(reqwest::Method::POST, &routers[1], "/notes?body=lost").await;
    call(reqwest::Method::POST, &routers[1], "/carts?id=2").await;
    call(reqwest::Method::POST, &routers[1], "/counter").await;

    let restored = platform.cli(&["backup", "restore", "production", &id, "--yes"]);
    assert!(restored.status.success(), "{}", text(&restored));
    for router in &routers {
        let notes = call(reqwest::Method::GET, router, "/notes").await;
        assert_eq!(notes["notes"], serde_json::json!(["kept"]));
        let carts = call(reqwest::Method::GET, router, "/carts").await;
        assert_eq!(carts["carts"], serde_json::json!([1]));
    }
    let counter = call(reqwest::Method::POST, &routers[2], "/counter").await;
    assert_eq!(counter["counter"], 2, "the backup's counter was 1");

    // Each replica is a copy of the restored data, and follows what is written after it.
    call(reqwest::Method::POST, &routers[1], "/notes?body=after").await;
    call(reqwest::Method::POST, &routers[1], "/carts?id=3").await;
    for node in ["production-2", "production-3"] {
        let kept = kept_on(&platform, node);
        let (port, password) = server_of(&kept, "db");
        // The replica copies the restored data again after the restore; it may still start.
        eventually(
            Duration::from_secs(30),
            "the replica to serve as one",
            || async {
                psql_as(port, &password, "SELECT pg_is_in_recovery()").is_ok_and(|r| r == "t")
            },
        )
        .await;
        eventually(
            Duration::from_secs(10),
            "the restored and the new note on a replica",
            || async {
                psql_as(
                    port,
                    &password,
                    "SELECT string_agg(body, ',' ORDER BY id) FROM notes",
                )
                .is_ok_and(|notes| notes == "kept,after")
            },
        )
        .await;
        let (port, password) = server_of(&kept, "carts");
        let size = mariadb_as(port, &password, "SHOW STATUS LIKE 'wsrep_cluster_size'");
        assert_eq!(size.unwrap().split_whitespace().last(), Some("3"));
        assert_eq!(
            mariadb_as(
                port,
                &password,
                "SELECT group_concat(id ORDER BY id) FROM carts"
            )
            .unwrap(),
            "1,3"
        );
        let (port, password) = server_of(&kept, "counter");
        redis_replica_holds(port, &password, "counter", "2").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_and_a_backup_queued_when_the_controller_stops_run_as_asked_once_it_starts_again()
{
    let (mut platform, project) = services_in_production().await;
    let production = platform.routers("production").await[0].clone();
    call(reqwest::Method::POST, &production, "/notes?body=kept").await;
    let taken = platform.cli(&["backup", "create", "production"]);
    assert!(taken.status.success(), "{}", text(&taken));
    let backup = platform.latest_activity().await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    call(reqwest::Method::POST, &production, "/notes?body=lost").await;

    // A deployment whose deploy hook waits for a file the test makes, outside its rehearsal.
    let config = project.path().join(".platform.app.yaml");
    let text_now = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_now.replace(
            "    set -e\n",
            "    set -e\n    [ -n \"$LOCKSTEP_REHEARSAL\" ] || until [ -e /app/gate/open ]; do sleep 0.1; done\n",
        ) + "mounts:\n  gate:\n    source: storage\n    source_path: gate\n",
    )
    .unwrap();
    project.commit("a deploy hook that waits");
    let mut push = platform
        .push_command(&project, "HEAD:production")
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(120),
        "the deploy hook running",
        || async {
            Platform::phase_names(&platform.latest_activity().await)
                .contains(&"deploy_hook".to_owned())
        },
    )
    .await;
    let pushed = platform.latest_activity().await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let queued = platform.cli(&[
        "backup",
        "restore",
        "production",
        &backup,
        "--yes",
        "--no-wait",
    ]);
    assert!(queued.status.success(), "{}", text(&queued));
    let restore = platform.latest_activity().await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let queued = platform.cli(&["backup", "create", "production", "--no-wait"]);
    assert!(queued.status.success(), "{}", text(&queued));
    let second_backup = platform.latest_activity().await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    platform.kill_controller();
    let _ = push.wait();
    let gate = platform.data_dir.join("controller/storage/production/gate");
    std::fs::write(gate.join("open"), "").unwrap();
    platform.restart().await;

    let activity = platform.wait_for_activity(&restore).await;
    assert_eq!(activity["result"], "success", "{activity}");
    let log = text(&platform.cli(&["activity", "log", &restore]));
    assert!(
        log.contains(&format!("Replacing the data with backup {backup}")),
        "{log}"
    );
    let notes = call(reqwest::Method::GET, &production, "/notes").await;
    assert_eq!(notes["notes"], serde_json::json!(["kept"]));
    // The restore redeployed what served when it started: the push before it.
    assert_eq!(
        activity["image"],
        platform.get(&format!("/activities/{pushed}")).await["image"]
    );
    // The backup queued behind it was taken after it, once.
    let taken = platform.wait_for_activity(&second_backup).await;
    assert_eq!(taken["result"], "success", "{taken}");
    let started = taken["phases"][0]["started_at"].as_str().unwrap();
    assert!(
        started >= activity["completed_at"].as_str().unwrap(),
        "the backup began at {started}, before the restore ended: {activity}"
    );
    let listed = platform.cli(&["backup", "list", "production", "--json"]);
    let backups: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> = backups
        .as_array()
        .unwrap()
        .iter()
        .map(|backup| backup["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second_backup.as_str(), backup.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_fails_on_productions_data_is_caught_in_rehearsal_and_production_never_closes()
 {
    let platform = Platform::start().await;
    let project = Project::example("services-app");
    let output = platform.push(&project, "HEAD:production");
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        !said.contains("Rehearsing"),
        "a first release has nothing to protect: {said}"
    );
    project.new_version("v2");
    let output = platform.push(&project, "HEAD:production");
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("Rehearsing the deploy hook on production-1 against a copy of production's services and mounts")
            && said.contains("The deploy hook succeeded in rehearsal"),
        "{said}"
    );
    let routers = platform.routers("production").await;
    for note in ["first", "second"] {
        call(
            reqwest::Method::POST,
            &routers[0],
            &format!("/notes?body={note}"),
        )
        .await;
    }

    // A migration that passes on an empty table and fails on production's rows.
    let migrate = project.path().join("migrate.py");
    let mut script = std::fs::read_to_string(&migrate).unwrap();
    script.push_str("postgresql(\"ALTER TABLE notes ADD COLUMN title text NOT NULL\")\n");
    std::fs::write(&migrate, script).unwrap();
    project.commit("notes get a title");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = edge_request_loop(platform.edge, "localhost", "/notes", stop.clone());
    let output = platform.push(&project, "HEAD:production");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = looping.await.unwrap();
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("ADD COLUMN title text NOT NULL']' returned non-zero exit status 1"),
        "the hook's own output: {said}"
    );
    assert!(
        said.contains("The deploy hook of app failed in rehearsal on production-1"),
        "{said}"
    );
    assert!(said.contains("production was not touched"), "{said}");
    assert!(!said.contains("Closing"), "{said}");

    assert!(!answers.is_empty());
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "answer {i}: {body}");
        assert!(
            body.contains("[\"first\", \"second\"]"),
            "answer {i}: {body}"
        );
    }
    // Production's schema and rows are as they were, and its deploy hook never ran again.
    let (primary, password) = server_of(&kept_on(&platform, "production-1"), "db");
    let sql = |query: &str| psql_as(primary, &password, query).unwrap();
    assert_eq!(
        sql(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'notes' AND column_name = 'title'"
        ),
        "0"
    );
    assert_eq!(sql("SELECT count(*) FROM notes"), "2");
    assert_eq!(sql("SELECT count(*) FROM migrations"), "2");
    let production = platform.environment_status("production").await;
    assert_eq!(production["generation"], 2, "no deployment started");
    let phases = Platform::phase_names(&platform.latest_activity().await);
    assert!(phases.contains(&"rehearse".to_owned()), "{phases:?}");
    assert!(!phases.contains(&"stage".to_owned()), "{phases:?}");
}

#[tokio::test]
async fn services_come_back_with_their_data_when_lockstep_starts_again() {
    let (mut platform, _) = services_in_production().await;
    let routers = platform.routers("production").await;
    call(reqwest::Method::POST, &routers[1], "/notes?body=kept").await;
    call(reqwest::Method::POST, &routers[2], "/carts?id=9").await;
    call(reqwest::Method::POST, &routers[0], "/counter").await;

    // Every node stops, the Galera cluster whole; it starts again on the member that left
    // last.
    platform.restart().await;
    let routers = platform.routers("production").await;
    for router in &routers {
        eventually(
            Duration::from_secs(90),
            "the services back on every node",
            || async {
                let answer = |path: &'static str| {
                    let url = format!("{router}{path}");
                    async move {
                        let response = router_client().get(url).send().await.ok()?;
                        response.status().is_success().then_some(())?;
                        response.json::<serde_json::Value>().await.ok()
                    }
                };
                let notes = answer("/notes").await;
                let carts = answer("/carts").await;
                notes.is_some_and(|n| n["notes"] == serde_json::json!(["kept"]))
                    && carts.is_some_and(|c| c["carts"] == serde_json::json!([9]))
            },
        )
        .await;
    }
    let counter = call(reqwest::Method::POST, &routers[2], "/counter").await;
    assert_eq!(counter["counter"], 2);
    // The members that did not start it rejoin it, retried until it is there.
    eventually(
        Duration::from_secs(90),
        "three Galera members again",
        || async {
            let sql = platform.cli(&[
                "sql",
                "production",
                "--relationship",
                "shop",
                "-c",
                "SHOW STATUS LIKE 'wsrep_cluster_size'",
            ]);
            text(&sql).contains("wsrep_cluster_size\t3")
        },
    )
    .await;
}

/// The sample app (which uses no service itself) with these services and relationships.
fn declare(project: &Project, services: &[(&str, &str, &str)]) {
    let yaml: String = services
        .iter()
        .map(|(name, service_type, _)| format!("{name}:\n  type: \"{service_type}\"\n"))
        .collect();
    let relationships: Vec<(String, String)> = services
        .iter()
        .map(|(name, _, endpoint)| (name.to_string(), format!("{name}:{endpoint}")))
        .collect();
    declare_yaml(project, &yaml, &relationships);
}

/// The sample app with `services_yaml` and these relationships (name, `"service:endpoint"`).
fn declare_yaml(project: &Project, services_yaml: &str, relationships: &[(String, String)]) {
    std::fs::create_dir_all(project.path().join(".platform")).unwrap();
    std::fs::write(
        project.path().join(".platform/services.yaml"),
        services_yaml,
    )
    .unwrap();
    let app = std::fs::read_to_string(support::sample_app().join(".platform.app.yaml")).unwrap();
    let relationships = if relationships.is_empty() {
        String::new()
    } else {
        relationships
            .iter()
            .map(|(name, target)| format!("  {name}: \"{target}\"\n"))
            .fold("relationships:\n".to_owned(), |all, line| all + &line)
    };
    std::fs::write(
        project.path().join(".platform.app.yaml"),
        app + &relationships,
    )
    .unwrap();
    project.commit(&format!("{} relationships", relationships.len()));
}

#[tokio::test]
async fn each_endpoint_is_a_user_with_the_privileges_its_configuration_gives() {
    let platform = Platform::start().await;
    let project = Project::sample();
    let services = r#"
shop:
  type: "mariadb:10.11"
  configuration:
    schemas: [main, legacy]
    endpoints:
      admin:
        default_schema: main
        privileges: {main: admin, legacy: admin}
      reporter:
        default_schema: legacy
        privileges: {legacy: ro}
db:
  type: "postgresql:15"
  configuration:
    databases: [main, events]
    extensions: [pg_trgm, uuid-ossp]
    endpoints:
      admin:
        privileges: {main: admin, events: admin}
      reporter:
        default_database: events
        privileges: {events: ro}
"#;
    let relationships = [
        ("shop_admin", "shop:admin"),
        ("shop_reports", "shop:reporter"),
        ("db_admin", "db:admin"),
        ("db_reports", "db:reporter"),
    ]
    .map(|(name, target)| (name.to_owned(), target.to_owned()));
    declare_yaml(&project, services, &relationships);
    let output = platform.push(&project, "HEAD:staging");
    assert!(output.status.success(), "{}", text(&output));
    let sql = |relationship: &str, query: &str| {
        let output = platform.cli(&[
            "sql",
            "staging",
            "--relationship",
            relationship,
            "-c",
            query,
        ]);
        (output.status.success(), text(&output))
    };
    let succeeds = |relationship: &str, query: &str| {
        let (ok, said) = sql(relationship, query);
        assert!(ok, "{relationship}: {query}: {said}");
        said
    };
    let refused = |relationship: &str, query: &str, because: &str| {
        let (ok, said) = sql(relationship, query);
        assert!(!ok, "{relationship} may: {query}: {said}");
        assert!(said.contains(because), "{relationship}: {query}: {said}");
    };

    // MariaDB: the administrator writes both schemas; the reporter reads one and writes none.
    succeeds(
        "shop_admin",
        "CREATE TABLE legacy.orders (id int); INSERT INTO legacy.orders VALUES (7)",
    );
    let read = succeeds(
        "shop_reports",
        "SELECT CONCAT(current_user(), '/', id) FROM orders",
    );
    assert!(read.contains("reporter@%/7"), "{read}");
    refused(
        "shop_reports",
        "INSERT INTO orders VALUES (8)",
        "INSERT command denied to user 'reporter'",
    );
    refused(
        "shop_reports",
        "SELECT 1 FROM main.anything",
        "denied to user 'reporter'",
    );

    // PostgreSQL the same, with its databases and the extension in each of them.
    succeeds(
        "db_admin",
        "CREATE TABLE events (id int); INSERT INTO events VALUES (7)",
    );
    let read = succeeds(
        "db_reports",
        "SELECT current_user || '/' || current_database() || '/' || id FROM events",
    );
    assert!(read.contains("reporter/events/7"), "{read}");
    let extensions = succeeds("db_reports", "SELECT extname FROM pg_extension");
    assert!(
        extensions.contains("pg_trgm") && extensions.contains("uuid-ossp"),
        "{extensions}"
    );
    refused(
        "db_reports",
        "INSERT INTO events VALUES (8)",
        "permission denied for table events",
    );
    refused(
        "db_reports",
        "\\c main",
        "permission denied for database \"main\"",
    );

    // Each endpoint has a password of its own: the reporter's does not let it in as the
    // administrator.
    let said = platform.cli(&[
        "ssh",
        "staging",
        "--",
        "printenv PLATFORM_RELATIONSHIPS | base64 -d",
    ]);
    let given: serde_json::Value = serde_json::from_slice(&said.stdout).unwrap();
    let field = |relationship: &str, name: &str| given[relationship][0][name].clone();
    assert_eq!(field("db_reports", "username"), "reporter");
    assert_eq!(field("db_reports", "path"), "events");
    assert_eq!(field("shop_admin", "rel"), "admin");
    let reporters = field("db_reports", "password");
    assert_ne!(reporters, field("db_admin", "password"));
    let as_admin = client(
        "psql",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &field("db_admin", "port").to_string(),
            "-U",
            "admin",
            "-d",
            "events",
            "-qtAc",
            "SELECT 1",
        ],
        &[("PGPASSWORD", reporters.as_str().unwrap())],
    );
    assert!(
        as_admin
            .as_ref()
            .is_err_and(|e| e.contains("password authentication failed for user \"admin\"")),
        "{as_admin:?}"
    );

    // Privileges follow the configuration: a reporter given write access writes at the next
    // push, with no restart of its service.
    let widened = services.replace("privileges: {legacy: ro}", "privileges: {legacy: rw}");
    declare_yaml(&project, &widened, &relationships);
    let output = platform.push(&project, "HEAD:staging");
    assert!(output.status.success(), "{}", text(&output));
    succeeds("shop_reports", "INSERT INTO orders VALUES (8)");
}

#[tokio::test]
async fn a_new_service_starts_empty_and_a_dropped_one_stops_with_its_data_kept() {
    let platform = Platform::start().await;
    let project = Project::sample();
    let push = |what: &str| {
        let output = platform.push(&project, "HEAD:staging");
        assert!(output.status.success(), "{what}: {}", text(&output));
        text(&output)
    };
    declare(&project, &[("db", "postgresql:15", "postgresql")]);
    assert!(push("db").contains("Service db on staging-1: primary, ready"));
    let sql = |query: &str| text(&platform.cli(&["sql", "staging", "-c", query]));
    sql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)");

    declare(
        &project,
        &[
            ("db", "postgresql:15", "postgresql"),
            ("cache", "redis:7.0", "redis"),
        ],
    );
    assert!(push("db and cache").contains("Service cache on staging-1: primary, ready"));
    let keys = platform.cli(&["redis", "staging", "--", "DBSIZE"]);
    assert_eq!(text(&keys).trim(), "0", "a new service starts empty");
    assert!(
        sql("SELECT x FROM kept").contains(" 1\n"),
        "{}",
        sql("SELECT x FROM kept")
    );

    declare(&project, &[("cache", "redis:7.0", "redis")]);
    push("cache alone");
    let status = text(&platform.cli(&["status"]));
    assert!(!status.contains("service db "), "{status}");
    let data = platform
        .data_dir
        .join("agents/staging-1/instances/staging/services/db/data/pg/PG_VERSION");
    assert!(data.exists(), "a dropped service's data stays");

    declare(
        &project,
        &[
            ("db", "postgresql:15", "postgresql"),
            ("cache", "redis:7.0", "redis"),
        ],
    );
    push("db again");
    assert!(
        sql("SELECT x FROM kept").contains(" 1\n"),
        "the data came back with it"
    );
}

/// Sends `signal` to `root` and every process descended from it, as a host that stops (SIGSTOP)
/// or comes back (SIGCONT) takes all of them with it; walked again until no new one appears.
fn signal_tree(root: i32, signal: nix::sys::signal::Signal) {
    let parent_of = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may hold spaces: the fields after it count.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let mut signalled = std::collections::BTreeSet::new();
    loop {
        let mut tree = std::collections::BTreeSet::from([root]);
        let mut grew = true;
        let processes: Vec<(i32, i32)> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| Some((pid, parent_of(pid)?)))
            .collect();
        while grew {
            grew = false;
            for (pid, parent) in &processes {
                if tree.contains(parent) && tree.insert(*pid) {
                    grew = true;
                }
            }
        }
        let new: Vec<i32> = tree.difference(&signalled).copied().collect();
        if new.is_empty() {
            return;
        }
        for pid in new {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            signalled.insert(pid);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_primarys_node_is_gone_a_promoted_replica_keeps_every_confirmed_write() {
    let (platform, _) = services_in_production().await;
    let routers = platform.routers("production").await;

    // A writer through the second node, whose app reaches the primary on the first node
    // through its endpoint. A note is confirmed once the app answered that it added it.
    let (confirmed_tx, mut confirmed) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let router = routers[1].clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let http = router_client();
            let mut attempted = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = format!("write {attempted}");
                attempted += 1;
                let url = format!("{router}/notes?body={}", body.replace(' ', "%20"));
                let added = http.post(url).timeout(Duration::from_secs(3)).send().await;
                if added.is_ok_and(|response| response.status().is_success()) {
                    confirmed_tx.send(body).unwrap();
                }
            }
            attempted
        })
    };
    let mut confirmed_writes = Vec::new();
    while confirmed_writes.len() < 20 {
        confirmed_writes.push(confirmed.recv().await.unwrap());
    }

    // A primary that runs is not replaced.
    let refused =
        tokio::task::block_in_place(|| platform.cli(&["service", "promote", "production", "db"]));
    assert_refused(&refused, "the primary of db runs on production-1");

    // The first node goes away mid-write: its agent, its app and its primaries stop at once.
    let first_agent = platform.agent_pid("production-1");
    signal_tree(first_agent, nix::sys::signal::Signal::SIGSTOP);
    while let Ok(body) = confirmed.try_recv() {
        confirmed_writes.push(body);
    }

    // Without a node named, the replica that received the most becomes the primary.
    let promote =
        tokio::task::block_in_place(|| platform.cli(&["service", "promote", "production", "db"]));
    assert!(promote.status.success(), "{}", text(&promote));
    let said = text(&promote);
    assert!(
        said.contains("The primary of db on production-1 is gone"),
        "{said}"
    );
    assert!(said.contains("Node production-1 does not answer"), "{said}");
    let new_primary = if said.contains("The primary of db is on production-2 now") {
        "production-2"
    } else {
        assert!(
            said.contains("The primary of db is on production-3 now"),
            "{said}"
        );
        "production-3"
    };
    let other = if new_primary == "production-2" {
        "production-3"
    } else {
        "production-2"
    };
    assert!(
        said.contains(&format!("Service db on {other}: replica of 127.0.0.1:")),
        "{said}"
    );

    // Writes come back through the same node, now to the new primary.
    let first_after = loop {
        let body = confirmed.recv().await.unwrap();
        let number: u32 = body.trim_start_matches("write ").parse().unwrap();
        confirmed_writes.push(body);
        if confirmed_writes.len() > 25 {
            break number;
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let attempted = writer.await.unwrap();
    while let Ok(body) = confirmed.try_recv() {
        confirmed_writes.push(body);
    }
    assert!(first_after > 0 && attempted > first_after);
    let notes = call(reqwest::Method::GET, &routers[1], "/notes").await;
    let stored: Vec<String> = notes["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    for body in &confirmed_writes {
        assert!(
            stored.contains(body),
            "confirmed write `{body}` lost; stored: {stored:?}"
        );
    }

    // The first node returns: its old primary, which may hold writes nobody confirmed, is set
    // aside and copied again from the new one before its node serves.
    signal_tree(first_agent, nix::sys::signal::Signal::SIGCONT);
    let kept_on = |node: &str| kept_on(&platform, node);
    eventually(
        Duration::from_secs(120),
        "the old primary a replica of the new one",
        || async { kept_on("production-1")["services"]["db"]["spec"]["role"]["role"] == "replica" },
    )
    .await;
    let (port, password) = server_of(&kept_on("production-1"), "db");
    eventually(
        Duration::from_secs(60),
        "every confirmed note on the old primary's node, now a replica",
        || async {
            psql_as(port, &password, "SELECT pg_is_in_recovery()").is_ok_and(|r| r == "t")
                && psql_as(port, &password, "SELECT count(*) FROM notes")
                    .is_ok_and(|count| count == stored.len().to_string())
        },
    )
    .await;
    assert!(
        platform
            .data_dir
            .join(
                "agents/production-1/instances/production/services/db/data/pg.replaced/PG_VERSION"
            )
            .exists(),
        "the old primary's data is set aside, not deleted"
    );
    // Its app reaches the new primary too.
    let notes = call(reqwest::Method::GET, &routers[0], "/notes").await;
    assert_eq!(notes["notes"].as_array().unwrap().len(), stored.len());
    let status = text(&platform.cli(&["status"]));
    assert_eq!(
        status
            .lines()
            .filter(|l| l.contains("service db (postgresql): primary"))
            .count(),
        1,
        "{status}"
    );
}
