//! `PLATFORM_RELATIONSHIPS` (SPEC section 10): for each relationship of the app, the service's
//! endpoint on this node, or the other app's router on this node (`app:http`), with the fields
//! Platform.sh gives.

use std::collections::BTreeMap;

use lockstep_config::Relationship;
use serde_json::{Value, json};

use crate::services::Reachable;

/// Another app of the project, as this node runs it.
pub struct AppEndpoint {
    /// Where its instance's router listens on this node.
    pub address: std::net::IpAddr,
    pub port: u16,
    /// Its `type`.
    pub runtime: String,
}

/// Platform.sh's relationships as one JSON object: each name maps to a list of one endpoint.
pub fn platform_relationships(
    relationships: &BTreeMap<String, Relationship>,
    services: &BTreeMap<String, Reachable>,
    apps: &BTreeMap<String, AppEndpoint>,
    cluster: &str,
) -> Value {
    let mut all = serde_json::Map::new();
    for (name, relationship) in relationships {
        if let Some(app) = apps.get(&relationship.service) {
            all.insert(name.clone(), app_entry(&relationship.service, app, cluster));
            continue;
        }
        let Some(service) = services.get(&relationship.service) else {
            // The configuration check ties every relationship to a declared service; a node
            // whose services lag behind gives the app no entry rather than a wrong one.
            continue;
        };
        let Some(connection) =
            crate::services::connection(&service.spec, relationship.endpoint.as_deref())
        else {
            // The configuration check ties every relationship to an endpoint of its service.
            continue;
        };
        let host = "127.0.0.1";
        let port = service.endpoint_port;
        let credentials = match (&connection.username, &connection.password) {
            (Some(user), Some(password)) => format!("{user}:{password}@"),
            _ => String::new(),
        };
        let path = connection
            .path
            .as_ref()
            .map_or(String::new(), |p| format!("/{p}"));
        all.insert(
            name.clone(),
            json!([{
                "scheme": connection.scheme,
                "host": host,
                "port": port,
                "username": connection.username,
                "password": connection.password,
                "path": connection.path,
                "query": connection.query,
                "fragment": null,
                "rel": connection.rel,
                "service": relationship.service,
                "type": service.spec.service_type,
                "cluster": cluster,
                "hostname": format!("{}.internal", relationship.service),
                "ip": host,
                "public": false,
                "host_mapped": false,
                "url": format!("{}://{credentials}{host}:{port}{path}", connection.scheme),
            }]),
        );
    }
    Value::Object(all)
}

/// An `app:http` relationship: plain HTTP to the app's router, which admits requests only while
/// the environment is open, as the edge's do.
fn app_entry(app_name: &str, app: &AppEndpoint, cluster: &str) -> Value {
    let host = app.address.to_string();
    json!([{
        "scheme": "http",
        "host": host,
        "port": app.port,
        "username": null,
        "password": null,
        "path": null,
        "query": {},
        "fragment": null,
        "rel": "http",
        "service": app_name,
        "type": app.runtime,
        "cluster": cluster,
        "hostname": format!("{app_name}.internal"),
        "ip": host,
        "public": false,
        "host_mapped": false,
        "url": format!("http://{host}:{}", app.port),
    }])
}
