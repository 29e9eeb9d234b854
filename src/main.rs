//! The `tollgate` binary: one executable, a subcommand per service. `main` only parses
//! arguments and wires; the work lives in the library crates.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about = "Event-sourced governance and audit pipeline for AI traffic")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the JSON Schema of every event, or write them as files into a directory.
    Schemas {
        /// Directory to write `<event>.json` files into; prints to stdout when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the topics Tollgate uses, with their default partitions and cleanup policy.
    Topics,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Schemas { out } => write_schemas(out),
        Command::Topics => {
            println!("{:<32} {:>10}  cleanup", "topic", "partitions");
            for spec in tollgate_schemas::topics::ALL {
                let cleanup = if spec.compacted { "compact" } else { "delete" };
                println!("{:<32} {:>10}  {cleanup}", spec.name, spec.partitions);
            }
            Ok(())
        }
    }
}

fn write_schemas(out: Option<PathBuf>) -> anyhow::Result<()> {
    let documents = tollgate_schemas::json_schema::all();
    let Some(dir) = out else {
        for (name, text) in documents {
            println!("// {name}\n{text}");
        }
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in documents {
        let path = dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
