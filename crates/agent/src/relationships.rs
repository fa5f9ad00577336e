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
        let shape = crate::services::shape(&service.spec);
        let host = "127.0.0.1";
        let port = service.endpoint_port;
        let credentials = match (shape.username.as_str(), shape.password.as_str()) {
            (Some(user), Some(password)) => format!("{user}:{password}@"),
            _ => String::new(),
        };
        let path = shape
            .path
            .as_str()
            .map_or(String::new(), |p| format!("/{p}"));
        all.insert(
            name.clone(),
            json!([{
                "scheme": shape.scheme,
                "host": host,
                "port": port,
                "username": shape.username,
                "password": shape.password,
                "path": shape.path,
                "query": shape.query,
                "fragment": null,
                "rel": relationship.endpoint.clone().unwrap_or_else(|| shape.rel.to_owned()),
                "service": relationship.service,
                "type": service.spec.service_type,
                "cluster": cluster,
                "hostname": format!("{}.internal", relationship.service),
                "ip": host,
                "public": false,
                "host_mapped": false,
                "url": format!("{}://{credentials}{host}:{port}{path}", shape.scheme),
            }]),
        );
    }
    Value::Object(all)
}
