//! Calls to node agents, with the answers sorted the way the deploy state machine reasons:
//! no answer (unreachable), refused (nothing changed), or failed.

use std::path::Path;
use std::time::Duration;

use lockstep_deploy::NodeFailure;
use lockstep_proto::agent::{
    HookOutcome, HookRequest, InstanceConfig, InstanceStatus, Step, SwapRequest,
};
use serde::Serialize;
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

#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    token: String,
}

pub enum Call<'a> {
    Configure(&'a InstanceConfig),
    Status,
    Stage { image: &'a str, path: &'a Path },
    Quiesce(&'a Step),
    Close(&'a Step),
    Swap(&'a SwapRequest),
    Hook(&'a HookRequest),
    Open(&'a Step),
    Background(&'a Step),
    Users(&'a [lockstep_proto::agent::NodeUser]),
    Exec(&'a lockstep_proto::agent::ExecRequest),
}

impl AgentClient {
    pub fn new(token: String) -> AgentClient {
        AgentClient {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .build()
                .expect("an HTTP client builds"),
            token,
        }
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
        let base = format!("{agent}/v1/instances/{env}");
        let request = match call {
            Call::Configure(config) => self.http.put(&base).json(config),
            Call::Status => self.http.get(&base),
            Call::Stage { image, path } => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| NodeFailure::Failed(format!("cannot read image {image}: {e}")))?;
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
                self.http.put(format!("{base}/images/{image}")).body(body)
            }
            Call::Quiesce(step) => post(&self.http, &base, "quiesce", step),
            Call::Close(step) => post(&self.http, &base, "close", step),
            Call::Swap(request) => post(&self.http, &base, "swap", request),
            Call::Hook(request) => post(&self.http, &base, "hooks", request),
            Call::Open(step) => post(&self.http, &base, "open", step),
            Call::Background(step) => post(&self.http, &base, "background", step),
            Call::Users(users) => self.http.put(format!("{base}/users")).json(users),
            Call::Exec(request) => post(&self.http, &base, "exec", request),
        };
        let response = request
            .bearer_auth(&self.token)
            .timeout(timeout)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let text = response.text().await.map_err(transport_error)?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                CallError::Node(NodeFailure::Failed(format!(
                    "unreadable answer from the agent: {e}"
                )))
            });
        }
        let message = serde_json::from_str::<lockstep_proto::agent::ApiError>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        if status == reqwest::StatusCode::CONFLICT {
            Err(NodeFailure::Refused(message).into())
        } else {
            Err(NodeFailure::Failed(format!("{status}: {message}")).into())
        }
    }

    /// Fetches a process log of an instance.
    pub async fn log(&self, agent: &str, env: &str, process: &str) -> Result<String, NodeFailure> {
        let response = self
            .http
            .get(format!("{agent}/v1/instances/{env}/logs/{process}"))
            .bearer_auth(&self.token)
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

fn transport_error(error: reqwest::Error) -> CallError {
    if error.is_timeout() {
        CallError::TimedOut
    } else {
        CallError::Node(NodeFailure::Unreachable)
    }
}

fn post<T: Serialize>(
    http: &reqwest::Client,
    base: &str,
    command: &str,
    body: &T,
) -> reqwest::RequestBuilder {
    http.post(format!("{base}/{command}")).json(body)
}
