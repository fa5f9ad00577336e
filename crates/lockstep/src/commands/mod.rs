pub mod agent;
pub mod build;
pub mod config;
