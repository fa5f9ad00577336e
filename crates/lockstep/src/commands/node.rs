//! `lockstep node list / add / remove`: the hosts of the project's environments, in pools.

use std::process::ExitCode;

use clap::Subcommand;
use lockstep_proto::nodes::{NewNode, NodeAdded, NodeEntry, Pool};

use crate::client::ApiClient;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// The nodes, their pools, agents, certificates and environments.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Place a node in a pool; prints the command that enrols its host, with a join token
    /// valid once, for a day.
    Add {
        name: String,
        /// production, staging or development.
        #[arg(long)]
        pool: Pool,
    },
    /// Take a node out of its environments and the project: its certificate is refused from
    /// then on.
    Remove { name: String },
}

pub async fn run(client: &ApiClient, command: NodeCommand) -> anyhow::Result<ExitCode> {
    match command {
        NodeCommand::List { json } => {
            let nodes: Vec<NodeEntry> = client.get("/nodes").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16} {:<12} {:<28} {:<17} ENVIRONMENTS",
                "NODE", "POOL", "AGENT", "CERTIFICATE"
            );
            for node in nodes {
                let certificate = node.certificate_expires.map_or_else(
                    || "awaiting join".to_owned(),
                    |at| format!("until {}", &at[..10.min(at.len())]),
                );
                println!(
                    "{:<16} {:<12} {:<28} {:<17} {}",
                    node.name,
                    node.pool.as_str(),
                    node.agent_url.as_deref().unwrap_or("-"),
                    certificate,
                    node.environments.join(", ")
                );
            }
        }
        NodeCommand::Add { name, pool } => {
            let added: NodeAdded = client
                .post("/nodes", &serde_json::to_value(NewNode { name, pool })?)
                .await?;
            println!(
                "node {} is in the {} pool; on its host, run:",
                added.name, added.pool
            );
            println!();
            println!(
                "  LOCKSTEP_JOIN_TOKEN={} lockstep agent --listen ADDRESS:7701 --join {}",
                added.join_token,
                client.base()
            );
            println!();
            if let Some(folder) = &added.shared_storage {
                println!(
                    "after mounting the {} pool's shared storage at {folder} on it (NFS or similar)",
                    added.pool
                );
            }
            println!("(the token enrols one host, once, within a day)");
        }
        NodeCommand::Remove { name } => {
            let _: serde_json::Value = client.delete(&format!("/nodes/{name}")).await?;
            println!("node {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
