//! The agent's Prometheus metrics, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouterLabels {
    environment: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    environment: String,
    command: String,
    result: String,
}

pub struct Metrics {
    registry: Registry,
    router_requests: Family<RouterLabels, Counter>,
    commands: Family<CommandLabels, Counter>,
    image_bytes_fetched: Counter,
    image_bytes_reused: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lockstep_agent");
        let router_requests = Family::<RouterLabels, Counter>::default();
        registry.register(
            "router_requests",
            "Requests at node routers, by outcome (proxied, closed, no_process, upstream_error)",
            router_requests.clone(),
        );
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands from the controller, by result",
            commands.clone(),
        );
        let image_bytes_fetched = Counter::default();
        registry.register(
            "image_bytes_fetched",
            "Bytes of images pulled from the controller",
            image_bytes_fetched.clone(),
        );
        let image_bytes_reused = Counter::default();
        registry.register(
            "image_bytes_reused",
            "Bytes of pulled images copied from images the node held",
            image_bytes_reused.clone(),
        );
        Metrics {
            registry,
            router_requests,
            commands,
            image_bytes_fetched,
            image_bytes_reused,
        }
    }

    pub fn router_request(&self, environment: &str, outcome: &str) {
        self.router_requests
            .get_or_create(&RouterLabels {
                environment: environment.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn command(&self, environment: &str, command: &str, ok: bool) {
        self.commands
            .get_or_create(&CommandLabels {
                environment: environment.to_owned(),
                command: command.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    pub fn image_pulled(&self, pulled: crate::pull::Pulled) {
        self.image_bytes_fetched.inc_by(pulled.fetched);
        self.image_bytes_reused.inc_by(pulled.reused);
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
