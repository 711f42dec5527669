//! `actorbus migrate`: create a store, or bring an older one's schema up to date.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The store to create (when missing) or upgrade: a SQLite file, or `postgres://…`.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
}

pub(crate) fn run(args: MigrateArgs) -> anyhow::Result<()> {
    migrate(&args)
}

fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    if let Some(url) = args.db.to_str().filter(|u| u.starts_with("postgres")) {
        let shown = crate::cli::shown(&args.db);
        let store = actorbus::Store::create_url(url)
            .with_context(|| format!("cannot create or migrate the store {shown}"))?;
        say!("{shown} is at schema version {}", store.schema_version()?);
        return Ok(());
    }
    let existed = args.db.exists();
    // Checked here because SQLite's "unable to open" is retried by the connection pool until
    // its timeout, with a log line per attempt.
    let dir = match args.db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    anyhow::ensure!(
        existed || dir.is_dir(),
        "cannot create the store {}: no directory {}",
        args.db.display(),
        dir.display()
    );
    let store = actorbus::Store::create(&args.db)
        .with_context(|| format!("cannot create or migrate the store {}", args.db.display()))?;
    let version = store.schema_version()?;
    if existed {
        say!("{} is at schema version {version}", args.db.display());
    } else {
        say!("created {} at schema version {version}", args.db.display());
    }
    Ok(())
}
