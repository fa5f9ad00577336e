//! Calls to node agents, with the answers sorted the way the deploy state machine reasons:
//! no answer (unreachable), refused (nothing changed), or failed.

use std::time::Duration;

use lockstep_deploy::NodeFailure;
use lockstep_proto::ImageId;
use lockstep_proto::agent::{
    HookOutcome, HookRequest, InstanceConfig, InstanceStatus, StageRequest, Step, SwapRequest,
};
use std::sync::{Arc, RwLock};

use lockstep_proto::nodes::{RenewalRequest, Renewed, RevokedCertificates};
use lockstep_transport::{Identity, TransportError};
use serde::de::DeserializeOwned;

/// Why a call got no usable answer.
#[derive(Debug)]
pub enum CallError {
    /// The deadline passed: the command may or may not have happened.
    TimedOut,
    Node(NodeFailure),
}

impl From<NodeFailure> for CallError {
    fn from(failure: NodeFailure) -> Self {
        CallError::Node(failure)
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::TimedOut => f.write_str("the agent did not answer in time"),
            CallError::Node(NodeFailure::Unreachable) => f.write_str("the agent is unreachable"),
            CallError::Node(NodeFailure::Refused(m) | NodeFailure::Failed(m)) => f.write_str(m),
        }
    }
}

/// How much of an image or snapshot file is read or written at once.
const STREAM_CHUNK: usize = 1 << 20;

#[derive(Clone)]
pub struct AgentClient {
    /// Calls with the controller's certificate; replaced when it is renewed.
    http: Arc<RwLock<reqwest::Client>>,
    /// The controller's cluster URL, where agents pull images from.
    image_source: String,
}

pub enum Call<'a> {
    Configure(&'a InstanceConfig),
    Status,
    /// Pull the image and unpack it beside the running release.
    Stage(&'a ImageId),
    Quiesce(&'a Step),
    Close(&'a Step),
    Swap(&'a SwapRequest),
    Hook(&'a HookRequest),
    Rehearse(&'a lockstep_proto::agent::RehearsalRequest),
    Open(&'a Step),
    Background(&'a Step),
    Users(&'a [lockstep_proto::agent::NodeUser]),
    Exec(&'a lockstep_proto::agent::ExecRequest),
    Services(&'a [lockstep_proto::agent::ServiceSpec]),
    ServiceClient(&'a lockstep_proto::agent::ServiceClientRequest),
    ServiceReplication,
    /// Stops a replica of the named service and removes its data.
    DiscardReplica(&'a str),
    /// Starts the named service's server unless it runs.
    StartService(&'a str),
}

impl AgentClient {
    pub fn new(identity: &Identity, image_source: String) -> Result<AgentClient, TransportError> {
        Ok(AgentClient {
            http: Arc::new(RwLock::new(lockstep_transport::http_client(identity)?)),
            image_source,
        })
    }

    /// Calls with `identity` from now on (the controller's renewed certificate).
    pub fn replace_identity(&self, identity: &Identity) -> Result<(), TransportError> {
        let client = lockstep_transport::http_client(identity)?;
        *self.http.write().expect("client lock") = client;
        Ok(())
    }

    pub fn http(&self) -> reqwest::Client {
        self.http.read().expect("client lock").clone()
    }

    /// A fresh certificate request from the agent at `agent`, to renew its certificate.
    pub async fn certificate_request(&self, agent: &str) -> Result<RenewalRequest, CallError> {
        let response = self
            .http()
            .post(agent_url(agent, &["v1", "certificate-request"])?)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(transport_error)?;
        decoded(response).await
    }

    /// Gives the agent at `agent` the certificate issued for its last request.
    pub async fn install_certificate(
        &self,
        agent: &str,
        certificate: String,
    ) -> Result<(), CallError> {
        self.put_to_agent(agent, "certificate", &Renewed { certificate })
            .await
    }

    /// Tells the agent at `agent` which certificates to refuse from now on.
    pub async fn revoke_certificates(
        &self,
        agent: &str,
        revoked: &RevokedCertificates,
    ) -> Result<(), CallError> {
        self.put_to_agent(agent, "revoked-certificates", revoked)
            .await
    }

    /// `PUT /v1/{path}` on the agent itself, outside any instance.
    async fn put_to_agent(
        &self,
        agent: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<(), CallError> {
        let response = self
            .http()
            .put(agent_url(agent, &["v1", path])?)
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(transport_error)?;
        successful(response).await.map(drop)
    }

    pub async fn status(&self, agent: &str, env: &str) -> Result<InstanceStatus, CallError> {
        self.call(agent, env, Call::Status, Duration::from_secs(10))
            .await
    }

    pub async fn hook(
        &self,
        agent: &str,
        env: &str,
        request: &HookRequest,
        timeout: Duration,
    ) -> Result<HookOutcome, CallError> {
        self.call(agent, env, Call::Hook(request), timeout).await
    }

    /// One call to an agent's instance of `env`, decoded into `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        agent: &str,
        env: &str,
        call: Call<'_>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let url = |rest: &[&str]| instance_url(agent, env, rest);
        let request = match call {
            Call::Configure(config) => self.http().put(url(&[])?).json(config),
            Call::Status => self.http().get(url(&[])?),
            Call::Stage(image) => {
                self.http()
                    .put(url(&["images", image.as_str()])?)
                    .json(&StageRequest {
                        source: self.image_source.clone(),
                    })
            }
            Call::Quiesce(step) => self.http().post(url(&["quiesce"])?).json(step),
            Call::Close(step) => self.http().post(url(&["close"])?).json(step),
            Call::Swap(request) => self.http().post(url(&["swap"])?).json(request),
            Call::Hook(request) => self.http().post(url(&["hooks"])?).json(request),
            Call::Rehearse(request) => self.http().post(url(&["rehearsal"])?).json(request),
            Call::Open(step) => self.http().post(url(&["open"])?).json(step),
            Call::Background(step) => self.http().post(url(&["background"])?).json(step),
            Call::Users(users) => self.http().put(url(&["users"])?).json(users),
            Call::Exec(request) => self.http().post(url(&["exec"])?).json(request),
            Call::Services(specs) => self.http().put(url(&["services"])?).json(specs),
            Call::ServiceClient(request) => self
                .http()
                .post(url(&["services", "client"])?)
                .json(request),
            Call::ServiceReplication => self.http().get(url(&["services", "replication"])?),
            Call::DiscardReplica(service) => {
                self.http().delete(url(&["services", service, "data"])?)
            }
            Call::StartService(service) => self.http().post(url(&["services", service, "start"])?),
        };
        let response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(transport_error)?;
        decoded(response).await
    }

    /// A consistent snapshot of service `service`, taken by its primary in instance `at`
    /// (agent, instance) while it serves: the answer whose body it is.
    async fn snapshot(
        &self,
        at: (&str, &str),
        service: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, CallError> {
        let snapshot = self
            .http()
            .post(instance_url(
                at.0,
                at.1,
                &["services", service, "snapshot"],
            )?)
            .timeout(timeout)
            .send()
            .await
            .map_err(transport_error)?;
        successful(snapshot).await
    }

    /// Writes a snapshot of service `service` (see [`AgentClient::copy_service_data`]) to
    /// `file`; its size.
    pub async fn save_snapshot(
        &self,
        at: (&str, &str),
        service: &str,
        file: &std::path::Path,
        timeout: Duration,
    ) -> Result<u64, CallError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let snapshot = self.snapshot(at, service, timeout).await?;
        let failed = |e: std::io::Error| {
            CallError::Node(NodeFailure::Failed(format!(
                "cannot write {}: {e}",
                file.display()
            )))
        };
        let mut out = tokio::io::BufWriter::with_capacity(
            STREAM_CHUNK,
            tokio::fs::File::create(file).await.map_err(failed)?,
        );
        let mut body = snapshot.bytes_stream();
        let mut size = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(transport_error)?;
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(failed)?;
        }
        out.flush().await.map_err(failed)?;
        out.get_ref().sync_all().await.map_err(failed)?;
        Ok(size)
    }

    /// Replaces service `service`'s data at its primary in `to` with the snapshot in `file`.
    pub async fn restore_from_file(
        &self,
        to: (&str, &str),
        service: &str,
        file: &std::path::Path,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let snapshot = tokio::fs::File::open(file).await.map_err(|e| {
            CallError::Node(NodeFailure::Failed(format!(
                "cannot read {}: {e}",
                file.display()
            )))
        })?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            snapshot,
            STREAM_CHUNK,
        ));
        self.put_service_data(to, service, body, timeout).await
    }

    /// Sends a snapshot to service `service`'s primary in `to`, which puts it in place of its
    /// data.
    async fn put_service_data(
        &self,
        to: (&str, &str),
        service: &str,
        body: reqwest::Body,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let restored = self
            .http()
            .put(instance_url(to.0, to.1, &["services", service, "data"])?)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        successful(restored).await.map(drop)
    }

    /// Removes every instance of `environment` on an agent, and its services with their data.
    pub async fn delete_environment(
        &self,
        agent: &str,
        environment: &str,
    ) -> Result<Vec<String>, CallError> {
        let url = agent_url(agent, &["v1", "environments", environment])?;
        let response = self
            .http()
            .delete(url)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(transport_error)?;
        decoded(response).await
    }

    /// Copies service `service`'s data from its primary in instance `from` (agent, instance)
    /// to its primary in `to`: a consistent snapshot streamed through the controller, which
    /// replaces the data at `to`. Answers how many bytes the snapshot had.
    pub async fn copy_service_data(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        service: &str,
        timeout: Duration,
    ) -> Result<u64, CallError> {
        use futures_util::StreamExt;
        let snapshot = self.snapshot(from, service, timeout).await?;
        let copied = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = copied.clone();
        let body = snapshot.bytes_stream().inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                counted.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
        self.put_service_data(to, service, reqwest::Body::wrap_stream(body), timeout)
            .await?;
        Ok(copied.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Fetches a process log of an instance.
    pub async fn log(&self, agent: &str, env: &str, process: &str) -> Result<String, NodeFailure> {
        let url = instance_url(agent, env, &["logs", process]).map_err(|error| match error {
            CallError::Node(failure) => failure,
            other => NodeFailure::Failed(other.to_string()),
        })?;
        let response = self
            .http()
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|_| NodeFailure::Unreachable)?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|_| NodeFailure::Unreachable)?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(NodeFailure::Failed(text))
        }
    }
}

/// An agent's successful answer, or what its failure means.
async fn successful(response: reqwest::Response) -> Result<reqwest::Response, CallError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.map_err(transport_error)?;
    Err(refusal(status, text))
}

/// An agent's successful answer decoded from JSON, or what its failure means.
async fn decoded<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, CallError> {
    let text = successful(response)
        .await?
        .text()
        .await
        .map_err(transport_error)?;
    serde_json::from_str(&text).map_err(|e| {
        CallError::Node(NodeFailure::Failed(format!(
            "unreadable answer from the agent: {e}"
        )))
    })
}

/// An agent's answer that is no success, as the state machine reasons about it.
fn refusal(status: reqwest::StatusCode, text: String) -> CallError {
    let message = serde_json::from_str::<lockstep_proto::agent::ApiError>(&text)
        .map(|e| e.error)
        .unwrap_or(text);
    if status == reqwest::StatusCode::CONFLICT {
        NodeFailure::Refused(message).into()
    } else {
        NodeFailure::Failed(format!("{status}: {message}")).into()
    }
}

fn transport_error(error: reqwest::Error) -> CallError {
    if error.is_timeout() {
        CallError::TimedOut
    } else {
        CallError::Node(NodeFailure::Unreachable)
    }
}

/// The URL of an instance's route on an agent, built segment by segment: a name with `/` or
/// `..` in it stays one segment (percent-encoded), never a path of its own.
fn instance_url(agent: &str, env: &str, rest: &[&str]) -> Result<reqwest::Url, CallError> {
    agent_url(agent, &[&["v1", "instances", env], rest].concat())
}

/// The URL of a route on an agent, built segment by segment.
fn agent_url(agent: &str, segments: &[&str]) -> Result<reqwest::Url, CallError> {
    let mut url = reqwest::Url::parse(agent).map_err(|e| {
        CallError::Node(NodeFailure::Failed(format!(
            "the agent's address {agent} is not a URL: {e}"
        )))
    })?;
    url.path_segments_mut()
        .map_err(|()| {
            CallError::Node(NodeFailure::Failed(format!(
                "the agent's address {agent} cannot have a path"
            )))
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_single_segments_of_the_agents_url() {
        let url = instance_url(
            "http://127.0.0.1:7701",
            "production",
            &["logs", "../../../../metrics"],
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7701/v1/instances/production/logs/..%2F..%2F..%2F..%2Fmetrics"
        );
        let image = instance_url("http://127.0.0.1:7701/", "feature", &["images", "abc"]).unwrap();
        assert_eq!(
            image.as_str(),
            "http://127.0.0.1:7701/v1/instances/feature/images/abc"
        );
    }
}
