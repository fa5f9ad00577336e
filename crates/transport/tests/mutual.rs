//! Mutual TLS end to end on loopback: who gets through, and who does not.

use std::sync::Arc;

use axum::Extension;
use axum::routing::get;
use lockstep_proto::nodes::RevokedCertificates;
use lockstep_transport::{
    Authority, Identity, Peer, RenewableIdentity, ServerIdentity, fingerprint_of, http_client,
    serve,
};

struct Server {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn server(identity: &Identity) -> (Server, Arc<ServerIdentity>) {
    serving(ServerIdentity::new(identity).unwrap()).await
}

async fn serving(server_identity: Arc<ServerIdentity>) -> (Server, Arc<ServerIdentity>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().route(
        "/who",
        get(|Extension(peer): Extension<Peer>| async move { peer.to_string() }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        server_identity.clone(),
        router,
        async move {
            let _ = stopped.await;
        },
    ));
    (Server { url, _stop: stop }, server_identity)
}

fn authority() -> (tempfile::TempDir, Authority) {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::load_or_create(dir.path(), "test").unwrap();
    (dir, authority)
}

fn loopback() -> Vec<String> {
    vec!["127.0.0.1".into()]
}

#[tokio::test]
async fn a_peer_of_the_same_authority_is_served_and_known_by_its_role() {
    let (_dir, authority) = authority();
    let node = authority
        .identity_for(&Peer::Node("n1".into()), &loopback())
        .unwrap();
    let controller = authority.identity_for(&Peer::Controller, &[]).unwrap();
    let (server, _) = server(&node).await;
    let answer = http_client(&controller)
        .unwrap()
        .get(format!("{}/who", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), "controller");
}

#[tokio::test]
async fn no_certificate_another_authority_or_plain_http_is_refused() {
    let (_dir, authority) = authority();
    let node = authority
        .identity_for(&Peer::Node("n1".into()), &loopback())
        .unwrap();
    let (server, _) = server(&node).await;

    let (_other_dir, other) = self::authority();
    let stranger = other.identity_for(&Peer::Controller, &[]).unwrap();
    let refused = http_client(&stranger)
        .unwrap()
        .get(format!("{}/who", server.url))
        .send()
        .await;
    assert!(refused.is_err(), "another authority's certificate got in");

    // Trusting the server, but presenting no certificate.
    let anonymous = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(authority.ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let refused = anonymous.get(format!("{}/who", server.url)).send().await;
    assert!(refused.is_err(), "a caller without a certificate got in");

    let plain = reqwest::get(server.url.replace("https://", "http://") + "/who").await;
    assert!(plain.is_err(), "plain HTTP got an answer");
}

#[tokio::test]
async fn a_server_certificate_for_another_address_is_not_trusted() {
    let (_dir, authority) = authority();
    let elsewhere = authority
        .identity_for(&Peer::Node("n1".into()), &["10.9.9.9".into()])
        .unwrap();
    let controller = authority.identity_for(&Peer::Controller, &[]).unwrap();
    let (server, _) = server(&elsewhere).await;
    let refused = http_client(&controller)
        .unwrap()
        .get(format!("{}/who", server.url))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a certificate for 10.9.9.9 served 127.0.0.1"
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_presented_without_a_restart() {
    let (_dir, authority) = authority();
    let first = authority
        .identity_for(&Peer::Node("n1".into()), &["10.9.9.9".into()])
        .unwrap();
    let controller = authority.identity_for(&Peer::Controller, &[]).unwrap();
    let (server, server_identity) = server(&first).await;
    let client = http_client(&controller).unwrap();
    assert!(
        client
            .get(format!("{}/who", server.url))
            .send()
            .await
            .is_err()
    );
    let renewed = authority
        .identity_for(&Peer::Node("n1".into()), &loopback())
        .unwrap();
    server_identity.replace(&renewed).unwrap();
    let answer = client
        .get(format!("{}/who", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), "controller");
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_in_the_handshake_and_after_a_restart() {
    let (_dir, authority) = authority();
    let node_dir = tempfile::tempdir().unwrap();
    authority
        .identity_for(&Peer::Node("n1".into()), &loopback())
        .unwrap()
        .save(node_dir.path())
        .unwrap();
    let removed = authority
        .identity_for(&Peer::Edge("removed".into()), &[])
        .unwrap();
    let kept = authority
        .identity_for(&Peer::Edge("kept".into()), &[])
        .unwrap();
    let answers = |url: String, caller: &Identity| {
        let client = http_client(caller).unwrap();
        async move { client.get(format!("{url}/who")).send().await.is_ok() }
    };

    let node = RenewableIdentity::load(node_dir.path().to_owned())
        .unwrap()
        .unwrap();
    let (server, _) = serving(node.server()).await;
    assert!(answers(server.url.clone(), &removed).await);
    node.revoke(RevokedCertificates {
        fingerprints: [fingerprint_of(&removed.certificate_pem).unwrap()].into(),
    })
    .unwrap();
    assert!(!answers(server.url.clone(), &removed).await);
    assert!(answers(server.url.clone(), &kept).await);

    let restarted = RenewableIdentity::load(node_dir.path().to_owned())
        .unwrap()
        .unwrap();
    let (server, _) = serving(restarted.server()).await;
    assert!(!answers(server.url.clone(), &removed).await);
    assert!(answers(server.url.clone(), &kept).await);
}
