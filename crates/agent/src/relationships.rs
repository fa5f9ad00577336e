//! `PLATFORM_RELATIONSHIPS` (SPEC section 10): for each relationship of the app, the service's
//! endpoint on this node, with the fields Platform.sh gives.

use std::collections::BTreeMap;

use lockstep_config::Relationship;
use serde_json::{Value, json};

use crate::services::Reachable;

/// Platform.sh's relationships as one JSON object: each name maps to a list of one endpoint.
pub fn platform_relationships(
    relationships: &BTreeMap<String, Relationship>,
    services: &BTreeMap<String, Reachable>,
    cluster: &str,
) -> Value {
    let mut all = serde_json::Map::new();
    for (name, relationship) in relationships {
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
