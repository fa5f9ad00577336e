//! How the command line reaches a running controller: `--api`/`LOCKSTEP_API` with
//! `LOCKSTEP_TOKEN`, or else the `endpoints.json` that `lockstep up` wrote in the data directory.

use std::path::Path;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

use crate::commands::up::Endpoints;

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ApiClient {
    pub fn find(
        api: Option<String>,
        token: Option<String>,
        data_dir: &Path,
    ) -> anyhow::Result<ApiClient> {
        let (base, token) = match (api, token) {
            (Some(api), Some(token)) => (api, token),
            (api, token) => {
                let path = data_dir.join("endpoints.json");
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "cannot find a running Lockstep: {} is missing; start one with `lockstep up`, or set LOCKSTEP_API and LOCKSTEP_TOKEN",
                        path.display()
                    )
                })?;
                let endpoints: Endpoints = serde_json::from_str(&text)
                    .with_context(|| format!("{} is unreadable", path.display()))?;
                (
                    api.unwrap_or(endpoints.api),
                    token.unwrap_or(endpoints.token),
                )
            }
        };
        Ok(ApiClient {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// The controller's API URL, as hosts and users reach it.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.send(self.http.patch(self.url(path)).json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(self.url(path))).await
    }

    pub async fn text(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the Lockstep API at {}", self.base))?;
        check(response).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the Lockstep API at {}", self.base))?;
        let response = check(response).await?;
        response
            .json()
            .await
            .context("unreadable answer from the API")
    }
}

async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or(text);
    bail!("{message} ({status})")
}
