pub mod build;
pub mod config;
